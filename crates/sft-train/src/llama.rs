//! The trainer's view of `sft_llama::Llama`.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::CausalLm;

impl CausalLm for sft_llama::Llama {
    fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        sft_llama::Llama::forward(self, input_ids, position_ids, attn_mask)
            .map_err(|source| Error::Llama { path: None, source })
    }

    fn hf_config(&self) -> serde_json::Value {
        let spec = sft_llama::HfConfigSpec::from(self.config().clone());
        let mut v = serde_json::to_value(spec).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "torch_dtype".into(),
                serde_json::Value::String("float32".into()),
            );
        }
        v
    }
}

/// Loads starting weights in f32 on `device`: an HF directory (`config.json` + safetensors, e.g.
/// a previous stage's `final/` or a checkpoint `step-N/`) or a `.gguf` file (dequantised).
pub fn load_model(path: &Path, device: Device) -> Result<sft_llama::LoadedModel> {
    sft_llama::load_model(path, device, Kind::Float).map_err(|source| Error::Llama {
        path: Some(path.to_path_buf()),
        source,
    })
}
