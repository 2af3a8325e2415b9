//! (stub; filled by the image work)
