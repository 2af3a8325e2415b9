//! The KMM `Module` (kmm.sigs.x-k8s.io/v1beta1) for the published images: one literal
//! kernelMapping per kernel, each pointing at `<repository>:${KERNEL_FULL_VERSION}`, which KMM
//! expands to the node's kernel release, i.e. the tag ckms gave the kernel's image.
//!
//! The document is built as a `serde_json::Value` and rendered as YAML by
//! [`crate::k8s::to_yaml`] (tests/kmm_crd.rs validates that YAML against KMM's CRD).

use serde_json::{json, Value};

use super::KmmImages;
use crate::k8s;

pub const API_VERSION: &str = "kmm.sigs.x-k8s.io/v1beta1";

/// The `Module` named after the plan loading its module from the plan's per-kernel images.
pub fn module(plan: &KmmImages) -> Value {
    let repository = &plan.repository;
    let mappings: Vec<Value> = plan
        .images
        .iter()
        .map(|i| {
            let image = if i.tag == format!("{repository}:{}", i.kernel) {
                format!("{repository}:${{KERNEL_FULL_VERSION}}")
            } else {
                i.tag.clone()
            };
            json!({"literal": i.kernel, "containerImage": image})
        })
        .collect();
    let mut container = json!({"modprobe": {"moduleName": plan.module_name}, "kernelMappings": mappings});
    if plan.insecure_registry {
        // KMM pulls over HTTPS unless told otherwise.
        container["registryTLS"] = json!({"insecure": true});
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "Module",
        "metadata": {"name": k8s::name(&plan.name)},
        "spec": {
            "moduleLoader": {"container": container},
            // Every Linux node; a fleet narrows it (KMM requires a selector).
            "selector": {"kubernetes.io/os": "linux"},
        },
    })
}

/// A KMM `PreflightValidation` for `kernel`: KMM checks that every Module has an image for
/// it (a cluster upgrade to the kernel waits for its `verified` status). ckms writes one only
/// for a kernel the store says is ready: built, signed and proven to load.
pub fn preflight(kernel: &str) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "PreflightValidation",
        "metadata": {"name": k8s::name(&format!("ckms-{kernel}"))},
        "spec": {"kernelVersion": kernel, "pushBuiltImage": false},
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_preflight_validation_per_ready_kernel() {
        let p = super::preflight("6.12.57+deb12-amd64");
        assert_eq!(p["kind"], "PreflightValidation");
        assert_eq!(p["spec"]["kernelVersion"], "6.12.57+deb12-amd64");
        assert_eq!(p["metadata"]["name"], "ckms-6-12-57-deb12-amd64");
    }
}
