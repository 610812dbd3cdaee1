//! Memory accounting (tracker) and, later, the VRAM planner (budget).
pub mod tracker;
