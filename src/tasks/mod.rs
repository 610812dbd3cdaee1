pub mod qa;
pub mod qa_post;
