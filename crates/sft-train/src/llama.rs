//! The trainer's view of `sft_llama::Llama`.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{BlockStack, CausalLm};

impl CausalLm for sft_llama::Llama {
    fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        sft_llama::Llama::forward(self, input_ids, position_ids, attn_mask).map_err(llama_err)
    }

    fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        sft_llama::Llama::embed(self, input_ids).map_err(llama_err)
    }

    fn blocks<'a>(
        &'a self,
        input_ids: &Tensor,
        position_ids: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
    ) -> Result<Box<dyn BlockStack + 'a>> {
        Ok(Box::new(
            sft_llama::Llama::blocks(self, input_ids, position_ids, attn_mask)
                .map_err(llama_err)?,
        ))
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        sft_llama::Llama::head(self, hidden).map_err(llama_err)
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

fn llama_err(source: sft_llama::Error) -> Error {
    Error::Llama { path: None, source }
}

impl BlockStack for sft_llama::Blocks<'_> {
    fn len(&self) -> usize {
        sft_llama::Blocks::len(self)
    }

    fn forward(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        sft_llama::Blocks::forward(self, i, x).map_err(llama_err)
    }
}
