//! Mistral: the Llama layer with a sliding attention window (`sliding_window`, every
//! layer) and no biases.

use super::Features;
use crate::config::Fields;
use crate::error::Result;

pub(super) fn features(_: &Fields<'_>) -> Result<Features> {
    Ok(Features::default())
}
