//! Memory accounting: the byte tracker (what tensors hold, every backend) and the VRAM
//! planner (what a training step will need, predicted from the model's code paths).
pub mod budget;
pub mod sim;
pub mod tracker;
pub mod walk;
