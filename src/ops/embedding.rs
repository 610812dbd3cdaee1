//! Embedding lookup (row gather) and its backward (scatter-add into the table's
//! gradient). The same op reorders beams during generation.

use crate::autograd::{needs_grad, record};
use crate::error::{Error, Result};
use crate::ops::fresh;
use crate::shape::DType;
use crate::tensor::Tensor;

impl Tensor {
    /// Rows of `self [n, cols]` picked by I32 `ids [..]`: result `[.., cols]`.
    pub fn index_select(&self, ids: &Tensor) -> Result<Tensor> {
        self.gather_rows(ids, None)
    }

    /// The profiler's cost of gathering `ids` rows of this table.
    fn gather_cost(&self, ids: &Tensor) -> crate::profile::OpCost {
        let d = self.dims();
        let (n, cols) = (
            d.first().copied().unwrap_or(0),
            d.get(1).copied().unwrap_or(0),
        );
        crate::profile::cost::gather(ids.elem_count(), n, cols, self.dtype())
    }

    /// The lookup; in backward, positions whose id is `skip` add nothing to the table's
    /// gradient.
    fn gather_rows(&self, ids: &Tensor, skip: Option<usize>) -> Result<Tensor> {
        // The span its tape node takes its backward cost from (under `embedding`'s).
        let _span =
            crate::profile::Span::new("index_select", self.device()).cost(|| self.gather_cost(ids));
        self.expect_rank("index_select (table)", 2)?;
        if ids.dtype() != DType::I32 {
            return Err(Error::DType {
                op: "index_select (ids)",
                expected: "i32",
                got: ids.dtype(),
            });
        }
        let (n, cols) = (self.dims()[0], self.dims()[1]);
        let mut out_dims = ids.dims().to_vec();
        out_dims.push(cols);
        let out = fresh(self.storage().index_select(&ids.storage(), cols)?, out_dims);
        if !needs_grad(&[self]) {
            return Ok(out);
        }
        let ids = ids.detach();
        Ok(record(
            "index_select",
            &[self, &ids.clone()],
            out,
            Box::new(move |g| {
                let d = g.storage().index_add(&ids.storage(), n, cols, skip)?;
                Ok(vec![Some(fresh(d, [n, cols])), None])
            }),
        ))
    }

    /// `nn.Embedding` forward: the table is `self`.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let _span =
            crate::profile::Span::new("embedding", self.device()).cost(|| self.gather_cost(ids));
        self.index_select(ids)
    }

    /// `nn.Embedding(padding_idx=pad)`: the lookup reads the `pad` row like any other,
    /// but the row gets no gradient (the scatter-add skips it, as PyTorch's
    /// `embedding_dense_backward` does), so the table is neither copied nor masked.
    pub fn embedding_padded(&self, ids: &Tensor, pad: usize) -> Result<Tensor> {
        let _span =
            crate::profile::Span::new("embedding", self.device()).cost(|| self.gather_cost(ids));
        self.gather_rows(ids, Some(pad))
    }
}
