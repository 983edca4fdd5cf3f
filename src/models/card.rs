//! The model card, `model.json` in a run directory: what `tlab predict
//! --model DIR`, `tlab export` and a resumed run need to rebuild the
//! classifier a run trained (architecture, classes, input, head).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::Preprocess;
use crate::recipe::HeadConfig;

/// What `tlab predict --model DIR` needs to rebuild the model (`model.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    pub backbone: String,
    pub classes: Vec<String>,
    pub image_size: u32,
    pub preprocess: Preprocess,
    pub head: HeadCard,
    pub recipe: String,
}

/// The head's shape, serialisable (mirrors [`HeadConfig`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeadCard {
    pub pooling: String,
    pub hidden: Vec<usize>,
    pub dropout: f64,
    /// Absent in model cards written before the key existed.
    #[serde(default)]
    pub batchnorm: bool,
}

impl From<&HeadConfig> for HeadCard {
    fn from(h: &HeadConfig) -> Self {
        HeadCard {
            pooling: match h.pooling {
                crate::recipe::Pooling::Avg => "avg".into(),
                crate::recipe::Pooling::Flatten => "flatten".into(),
                crate::recipe::Pooling::Concat => "concat".into(),
            },
            hidden: h.hidden.clone(),
            dropout: h.dropout,
            batchnorm: h.batchnorm,
        }
    }
}

impl HeadCard {
    pub(crate) fn to_config(&self) -> Result<HeadConfig> {
        let pooling = match self.pooling.as_str() {
            "avg" => crate::recipe::Pooling::Avg,
            "flatten" => crate::recipe::Pooling::Flatten,
            "concat" => crate::recipe::Pooling::Concat,
            other => {
                return Err(Error::ModelCard(format!("unknown pooling `{other}`, expected avg, flatten or concat")))
            }
        };
        Ok(HeadConfig { pooling, hidden: self.hidden.clone(), dropout: self.dropout, batchnorm: self.batchnorm })
    }
}
