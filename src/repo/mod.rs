//! (stub; filled by the repo work)
