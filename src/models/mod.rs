pub mod bert;
pub mod distilbert;
pub mod encoder;
