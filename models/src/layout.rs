//! The flat parameter layout: every parameter lives in one contiguous f32 buffer.
//!
//! Order: `wte`, `wpe`, then each block `h.{l}.*` as one contiguous range, then `ln_f.*`.
//! Names are Hugging Face GPT-2 names without the `transformer.` prefix; matrices use the
//! Conv1D layout `(in_features, out_features)`, so import/export is a plain copy.

use std::ops::Range;

use shoal_kernels::DecaySpan;

use crate::GptConfig;

/// One named tensor inside the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamTensor {
    /// Hugging Face name without the `transformer.` prefix, e.g. `h.0.attn.c_attn.weight`.
    pub name: String,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Offset of the first element in the flat buffer.
    pub offset: usize,
    /// Whether AdamW weight decay applies (tensors with two or more dimensions).
    pub decay: bool,
}

impl ParamTensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tensor's range in the flat buffer.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// The ordered list of tensors of a GPT model and where each lives in the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    tensors: Vec<ParamTensor>,
    layers: Vec<Range<usize>>,
    len: usize,
}

/// Per-block tensor suffixes and shapes in layout order, for width `c`.
fn block_tensors(c: usize) -> [(&'static str, Vec<usize>); 12] {
    [
        ("ln_1.weight", vec![c]),
        ("ln_1.bias", vec![c]),
        ("attn.c_attn.weight", vec![c, 3 * c]),
        ("attn.c_attn.bias", vec![3 * c]),
        ("attn.c_proj.weight", vec![c, c]),
        ("attn.c_proj.bias", vec![c]),
        ("ln_2.weight", vec![c]),
        ("ln_2.bias", vec![c]),
        ("mlp.c_fc.weight", vec![c, 4 * c]),
        ("mlp.c_fc.bias", vec![4 * c]),
        ("mlp.c_proj.weight", vec![4 * c, c]),
        ("mlp.c_proj.bias", vec![c]),
    ]
}

impl ParamLayout {
    /// The layout of a model with this configuration.
    pub fn new(config: &GptConfig) -> Self {
        let c = config.n_embd;
        let mut tensors = Vec::new();
        let mut offset = 0;
        let mut push = |name: String, shape: Vec<usize>| {
            let t = ParamTensor {
                decay: shape.len() >= 2,
                name,
                shape,
                offset,
            };
            offset += t.len();
            tensors.push(t);
            offset
        };
        push("wte.weight".into(), vec![config.vocab_size, c]);
        push("wpe.weight".into(), vec![config.n_positions, c]);
        let mut layers = Vec::with_capacity(config.n_layer);
        for l in 0..config.n_layer {
            let mut start = None;
            let mut end = 0;
            for (suffix, shape) in block_tensors(c) {
                let len: usize = shape.iter().product();
                end = push(format!("h.{l}.{suffix}"), shape);
                start.get_or_insert(end - len);
            }
            layers.push(start.unwrap_or(end)..end);
        }
        push("ln_f.weight".into(), vec![c]);
        let len = push("ln_f.bias".into(), vec![c]);
        Self {
            tensors,
            layers,
            len,
        }
    }

    /// Total number of f32 elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the layout is empty (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All tensors in layout order.
    pub fn tensors(&self) -> &[ParamTensor] {
        &self.tensors
    }

    /// The tensor with this name, if any.
    pub fn get(&self, name: &str) -> Option<&ParamTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The contiguous range holding every tensor of block `l`.
    pub fn layer_range(&self, l: usize) -> Range<usize> {
        self.layers[l].clone()
    }

    /// The ranges [`crate::Gpt::backward_hooked`] reports, in its order: `ln_f`, each
    /// block from the last to the first, then the embeddings.
    pub fn backward_ranges(&self) -> Vec<Range<usize>> {
        let lnf = self.get("ln_f.weight").map_or(self.len, |t| t.offset);
        let embeddings_end = self.layers.first().map_or(lnf, |r| r.start);
        let mut ranges = Vec::with_capacity(self.layers.len() + 2);
        ranges.push(lnf..self.len);
        ranges.extend(self.layers.iter().rev().cloned());
        ranges.push(0..embeddings_end);
        ranges
    }

    /// Weight-decay spans covering the whole buffer: merged runs of decayed / not decayed tensors.
    pub fn decay_spans(&self) -> Vec<DecaySpan> {
        let mut spans: Vec<DecaySpan> = Vec::new();
        for t in &self.tensors {
            match spans.last_mut() {
                Some(s) if s.decay == t.decay && s.end == t.offset => s.end = t.offset + t.len(),
                _ => spans.push(DecaySpan {
                    start: t.offset,
                    end: t.offset + t.len(),
                    decay: t.decay,
                }),
            }
        }
        spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_contiguous_and_layers_are_ranges() {
        let cfg = GptConfig::preset("tiny").unwrap();
        let layout = ParamLayout::new(&cfg);
        let mut off = 0;
        for t in layout.tensors() {
            assert_eq!(t.offset, off, "{}", t.name);
            off += t.len();
        }
        assert_eq!(off, layout.len());
        for l in 0..cfg.n_layer {
            let r = layout.layer_range(l);
            let first = layout.get(&format!("h.{l}.ln_1.weight")).unwrap();
            let last = layout.get(&format!("h.{l}.mlp.c_proj.bias")).unwrap();
            assert_eq!(r, first.offset..last.offset + last.len());
        }
        let spans = layout.decay_spans();
        assert_eq!(spans.first().unwrap().start, 0);
        assert_eq!(spans.last().unwrap().end, layout.len());
        assert!(spans.windows(2).all(|w| w[0].end == w[1].start));
        assert!(spans[0].decay);
    }
}
