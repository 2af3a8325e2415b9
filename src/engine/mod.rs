//! (stub; filled by the engine work)
