//! Where Services come from: the Kubernetes API, or a directory of manifests.

pub mod files;
pub mod kube;
