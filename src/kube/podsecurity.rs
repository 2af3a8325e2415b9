//! PodSecurity "restricted" (filled in next).
