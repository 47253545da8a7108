// The transposed op's bias, the one step of that op that is not the forward op's grad_input.
#include <ATen/core/Tensor.h>

#include "local_conv.h"

namespace lc_cuda {

void add_transpose_bias(at::Tensor& out, const std::optional<at::Tensor>& bias) {
  if (!bias.has_value()) return;
  if (bias->dim() == 1) {
    std::vector<int64_t> shape(out.dim(), 1);
    shape[1] = bias->size(0);
    out.add_(bias->view(shape));
  } else {
    out.add_(bias->unsqueeze(0));
  }
}

}  // namespace lc_cuda
