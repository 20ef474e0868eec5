//! Parameter paths (`layers.3.conv.weight`) for visitors and mappers.
//!
//! burn's derive enters a module for every struct field, `Vec` index and enum variant. Enum
//! variant names (`Conv`, `Linear`, …) would make paths depend on Rust type names, so they are
//! left out: a checkpoint says `layers.0.conv.weight`, like a PyTorch state dict.

/// Tracks the current path while a visitor or mapper walks a module tree.
#[derive(Debug, Default, Clone)]
pub(crate) struct PathTracker {
    parts: Vec<Option<String>>,
}

impl PathTracker {
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) {
        let keep = !container_type.starts_with("Enum");
        self.parts.push(keep.then(|| name.to_string()));
    }
    pub(crate) fn exit(&mut self) {
        self.parts.pop();
    }
    pub(crate) fn path(&self) -> String {
        let v: Vec<&str> = self.parts.iter().flatten().map(String::as_str).collect();
        v.join(".")
    }
}
