//! The Kubernetes objects `farm kube render` writes (filled in next).
