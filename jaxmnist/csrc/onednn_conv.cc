// torch's Conv2d through oneDNN (the library PyTorch's CPU convolutions run on), as three XLA FFI handlers:
// forward, the input's gradient and the kernel's gradient. Activations NHWC and kernels HWIO, float32, in XLA's
// row-major layout, as jaxmnist.onednn calls them; the same stride and padding along both spatial axes.
//
// Built on first use by jaxmnist/onednn.py (g++, the headers of XLA's FFI from jaxlib and oneDNN's from the
// onednn-devel-cpu-gomp wheel) and cached per machine. Activations stay NHWC in oneDNN (its brgemm kernels read them
// as they are); the kernel goes into whatever blocked layout the chosen implementation asks for, a reorder of a few
// KB per call. oneDNN keeps its own cache of compiled primitives, so the descriptors built on every call cost
// microseconds, not a compile.
#include <cstdint>
#include <exception>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
using F32 = ffi::Buffer<ffi::F32, 4>;
using F32Out = ffi::ResultBuffer<ffi::F32, 4>;

namespace {

dnnl::engine& cpu() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One convolution in oneDNN's terms: logical NCHW / OIHW dims, stride and padding (right padding such that the
// output comes out the size XLA allocated: below zero where the stride leaves the last rows unread, as in torch).
struct Conv {
  dims src, wei, dst, strides, pad_l, pad_r;

  dnnl::memory::desc src_md() const { return {src, dnnl::memory::data_type::f32, tag::nhwc}; }
  dnnl::memory::desc dst_md() const { return {dst, dnnl::memory::data_type::f32, tag::nhwc}; }
  dnnl::memory::desc any_wei_md() const { return {wei, dnnl::memory::data_type::f32, tag::any}; }
  dnnl::memory::desc hwio_md() const { return {wei, dnnl::memory::data_type::f32, tag::hwio}; }

  dnnl::convolution_forward::primitive_desc forward() const {
    return {cpu(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
            src_md(), any_wei_md(), dst_md(), strides, pad_l, pad_r};
  }
};

// x [N,H,W,C], w [KH,KW,C,O], y [N,HO,WO,O]; an error where they do not make one convolution.
ffi::ErrorOr<Conv> describe(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
                            int64_t stride, int64_t padding) {
  Conv c;
  c.src = {x[0], x[3], x[1], x[2]};
  c.wei = {w[3], w[2], w[0], w[1]};
  c.dst = {y[0], y[3], y[1], y[2]};
  c.strides = {stride, stride};
  c.pad_l = {padding, padding};
  c.pad_r = {(y[1] - 1) * stride + w[0] - x[1] - padding, (y[2] - 1) * stride + w[1] - x[2] - padding};
  bool valid = stride >= 1 && padding >= 0 && x[0] == y[0] && x[3] == w[2] && y[3] == w[3] &&
               y[1] >= 1 && y[2] >= 1 && c.pad_r[0] > padding - stride && c.pad_r[1] > padding - stride &&
               c.pad_r[0] <= padding && c.pad_r[1] <= padding;
  if (!valid) {
    return ffi::Unexpected(ffi::Error::InvalidArgument("onednn_conv: shapes, stride and padding make no convolution"));
  }
  return c;
}

// The user's HWIO kernel as `md`: itself, or a reordered copy.
dnnl::memory kernel_as(const dnnl::memory::desc& md, dnnl::memory user, dnnl::stream& stream) {
  if (md == user.get_desc()) return user;
  dnnl::memory blocked(md, cpu());
  dnnl::reorder(user, blocked).execute(stream, user, blocked);
  return blocked;
}

// Runs `body(conv, stream)` on a described convolution, waits for it, and turns oneDNN's exceptions (and any other
// C++ exception, which must not cross the FFI) into an error; a shape error from `describe` is returned as it is.
template <typename Body>
ffi::Error run(const ffi::ErrorOr<Conv>& conv, Body body) {
  if (conv.has_error()) return conv.error();
  try {
    dnnl::stream stream(cpu());
    body(conv.value(), stream);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {  // bad_alloc and the like: an error, never a terminate across the FFI
    return ffi::Error::Internal(std::string("onednn_conv: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(F32 x, F32 w, F32Out y, int64_t stride, int64_t padding) {
  auto conv = describe(x.dimensions(), w.dimensions(), y->dimensions(), stride, padding);
  return run(conv, [&](const Conv& c, dnnl::stream& stream) {
    auto pd = c.forward();
    dnnl::memory src(c.src_md(), cpu(), x.typed_data()), dst(c.dst_md(), cpu(), y->typed_data());
    auto wei = kernel_as(pd.weights_desc(), dnnl::memory(c.hwio_md(), cpu(), w.typed_data()), stream);
    dnnl::convolution_forward(pd).execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
  });
}

ffi::Error InputGrad(F32 dy, F32 w, F32Out dx, int64_t stride, int64_t padding) {
  auto conv = describe(dx->dimensions(), w.dimensions(), dy.dimensions(), stride, padding);
  return run(conv, [&](const Conv& c, dnnl::stream& stream) {
    dnnl::convolution_backward_data::primitive_desc pd(cpu(), dnnl::algorithm::convolution_direct, c.src_md(),
        c.any_wei_md(), c.dst_md(), c.strides, c.pad_l, c.pad_r, c.forward());
    dnnl::memory ddst(c.dst_md(), cpu(), dy.typed_data()), dsrc(c.src_md(), cpu(), dx->typed_data());
    auto wei = kernel_as(pd.weights_desc(), dnnl::memory(c.hwio_md(), cpu(), w.typed_data()), stream);
    dnnl::convolution_backward_data(pd).execute(
        stream, {{DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, dsrc}});
  });
}

ffi::Error KernelGrad(F32 x, F32 dy, F32Out dw, int64_t stride, int64_t padding) {
  auto conv = describe(x.dimensions(), dw->dimensions(), dy.dimensions(), stride, padding);
  return run(conv, [&](const Conv& c, dnnl::stream& stream) {
    dnnl::convolution_backward_weights::primitive_desc pd(cpu(), dnnl::algorithm::convolution_direct, c.src_md(),
        c.any_wei_md(), c.dst_md(), c.strides, c.pad_l, c.pad_r, c.forward());
    dnnl::memory src(c.src_md(), cpu(), x.typed_data()), ddst(c.dst_md(), cpu(), dy.typed_data());
    dnnl::memory user(c.hwio_md(), cpu(), dw->typed_data());
    bool direct = pd.diff_weights_desc() == user.get_desc();
    dnnl::memory dwei = direct ? user : dnnl::memory(pd.diff_weights_desc(), cpu());
    dnnl::convolution_backward_weights(pd).execute(
        stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_DIFF_WEIGHTS, dwei}});
    if (!direct) dnnl::reorder(dwei, user).execute(stream, dwei, user);
  });
}

}  // namespace

#define JAXMNIST_BIND ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Attr<int64_t>("stride").Attr<int64_t>("padding")
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmnistOnednnConv, Forward, JAXMNIST_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmnistOnednnConvInputGrad, InputGrad, JAXMNIST_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxmnistOnednnConvKernelGrad, KernelGrad, JAXMNIST_BIND);
