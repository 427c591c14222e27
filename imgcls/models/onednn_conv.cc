// 2-D convolutions on the CPU through oneDNN, as XLA FFI handlers called from jitted JAX code.
//
// Three handlers, one per pass of a training step (imgcls/models/onednn.py wraps them in a
// jax.custom_vjp):
//   imgcls_onednn_conv_fwd      y  = conv(x, w) [+ b] [relu]
//   imgcls_onednn_conv_bwd_data dx = conv_transpose(dy, w)
//   imgcls_onednn_conv_bwd_w    dw [, db] from x and dy
// Activations are NHWC and kernels HWIO (XLA's layouts for flax's convolutions; a grouped kernel
// is HW(I/G)O, oneDNN's hwigo) at the call boundary. oneDNN picks the kernel's inner layout
// (`any`), reordered here each call: kernels are small beside activations. Primitive descriptors
// and primitives are built once per shape and kept (`Cache`); scratchpads are per thread.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A 64-byte aligned buffer per thread, grown as needed.
class Buffer {
 public:
  ~Buffer() { std::free(data_); }
  void* Get(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, size_);
      if (data_ == nullptr) size_ = 0;
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

thread_local Buffer scratch_buffer, weights_buffer;

// What a convolution is: shapes (NHWC input, HWIO kernel, NHWC output), geometry and dtype.
struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow;
  int64_t sh, sw, pt, pb, pl, pr, dh, dw, groups;
  memory::data_type dtype;
  bool bias, relu;

  std::string Key(const char* op) const {
    std::string key(op);
    for (int64_t v : {n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, dh, dw, groups,
                      int64_t(dtype), int64_t(bias), int64_t(relu)}) {
      key += ',' + std::to_string(v);
    }
    return key;
  }
  memory::desc Src() const { return memory::desc({n, c, h, w}, dtype, tag::nhwc); }
  memory::desc Dst() const { return memory::desc({n, o, oh, ow}, dtype, tag::nhwc); }
  memory::desc Bias() const { return bias ? memory::desc({o}, dtype, tag::a) : memory::desc(); }
  // The kernel as the caller holds it (HWIO / hwigo) and with oneDNN's choice of layout.
  memory::desc UserWeights() const {
    if (groups == 1) return memory::desc({o, c, kh, kw}, dtype, tag::hwio);
    return memory::desc({groups, o / groups, c / groups, kh, kw}, dtype, tag::hwigo);
  }
  memory::desc AnyWeights() const {
    if (groups == 1) return memory::desc({o, c, kh, kw}, dtype, tag::any);
    return memory::desc({groups, o / groups, c / groups, kh, kw}, dtype, tag::any);
  }
  memory::dims Strides() const { return {sh, sw}; }
  memory::dims Dilation() const { return {dh - 1, dw - 1}; }
  memory::dims PadL() const { return {pt, pl}; }
  memory::dims PadR() const { return {pb, pr}; }

  dnnl::convolution_forward::primitive_desc Forward() const {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (relu) {
      dnnl::post_ops ops;
      ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      attr.set_post_ops(ops);
    }
    return dnnl::convolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, Src(),
        AnyWeights(), Bias(), Dst(), Strides(), Dilation(), PadL(), PadR(), attr);
  }
};

// A primitive with its descriptor's memory layouts, and the reorder of the user's kernel.
struct Entry {
  dnnl::primitive primitive;
  memory::desc weights, scratchpad;
  dnnl::reorder weights_reorder;  // user layout <-> weights; empty where they are the same
};

class Cache {
 public:
  template <typename Make>
  std::shared_ptr<const Entry> Get(const std::string& key, Make make) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = entries_.find(key);
      if (it != entries_.end()) return it->second;
    }
    auto entry = std::make_shared<const Entry>(make());
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.emplace(key, entry).first->second;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<const Entry>> entries_;
};

Cache& Primitives() {
  static Cache cache;
  return cache;
}

template <typename PrimitiveDesc>
memory::desc WeightsOf(const PrimitiveDesc& pd, bool diff) {
  return diff ? pd.diff_weights_desc() : pd.weights_desc();
}

// The reorder between the user's kernel and the primitive's: `to_primitive` for the kernel an
// input, else for the kernel's gradient an output.
dnnl::reorder WeightsReorder(const memory::desc& user, const memory::desc& inner, bool to_primitive) {
  if (user == inner) return dnnl::reorder();
  auto& engine = Engine();
  return to_primitive ? dnnl::reorder(dnnl::reorder::primitive_desc(engine, user, engine, inner))
                      : dnnl::reorder(dnnl::reorder::primitive_desc(engine, inner, engine, user));
}

ffi::Error Fail(const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kInternal, "imgcls oneDNN convolution: " + what);
}

// The geometry from the buffers' shapes and the call's attributes, checked.
ffi::Error MakeGeometry(ffi::AnyBuffer::Dimensions x, ffi::AnyBuffer::Dimensions k,
                        ffi::AnyBuffer::Dimensions y, ffi::DataType dtype,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                        ffi::Span<const int64_t> dilation, int64_t groups, bool bias, bool relu,
                        Geometry* g) {
  if (x.size() != 4 || k.size() != 4 || y.size() != 4 || strides.size() != 2 ||
      padding.size() != 4 || dilation.size() != 2 || groups < 1) {
    return Fail("expected NHWC activations, an HWIO kernel, 2 strides, 4 pads, 2 dilations");
  }
  memory::data_type data_type;
  if (dtype == ffi::DataType::F32) {
    data_type = memory::data_type::f32;
  } else if (dtype == ffi::DataType::BF16) {
    data_type = memory::data_type::bf16;
  } else {
    return Fail("only float32 and bfloat16 are supported");
  }
  *g = Geometry{x[0], x[1], x[2], x[3], k[0], k[1], k[3], y[1], y[2],
                strides[0], strides[1], padding[0], padding[1], padding[2], padding[3],
                dilation[0], dilation[1], groups, data_type, bias, relu};
  if (k[2] * groups != g->c || g->o % groups != 0 || y[0] != g->n || y[3] != g->o) {
    return Fail("the kernel's shape does not match the activations' channels and groups");
  }
  return ffi::Error::Success();
}

void* Scratchpad(const Entry& entry) { return scratch_buffer.Get(entry.scratchpad.get_size()); }

ffi::Error ConvForward(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::AnyBuffer bias,
                       ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> strides,
                       ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation,
                       int64_t groups, bool relu) {
  Geometry g;
  bool has_bias = bias.element_count() > 0;
  if (auto error = MakeGeometry(x.dimensions(), kernel.dimensions(), y->dimensions(), x.element_type(),
                                strides, padding, dilation, groups, has_bias, relu, &g);
      error.failure()) {
    return error;
  }
  if (y->element_count() == 0) return ffi::Error::Success();
  try {
    auto entry = Primitives().Get(g.Key("fwd"), [&] {
      auto pd = g.Forward();
      return Entry{dnnl::convolution_forward(pd), pd.weights_desc(), pd.scratchpad_desc(),
                   WeightsReorder(g.UserWeights(), pd.weights_desc(), true)};
    });
    auto& engine = Engine();
    dnnl::stream stream(engine);
    memory user_weights(g.UserWeights(), engine, kernel.untyped_data());
    memory weights = user_weights;
    if (entry->weights_reorder) {
      weights = memory(entry->weights, engine, weights_buffer.Get(entry->weights.get_size()));
      entry->weights_reorder.execute(stream, user_weights, weights);
    }
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(g.Src(), engine, x.untyped_data())},
        {DNNL_ARG_WEIGHTS, weights},
        {DNNL_ARG_DST, memory(g.Dst(), engine, y->untyped_data())},
        {DNNL_ARG_SCRATCHPAD, memory(entry->scratchpad, engine, Scratchpad(*entry))}};
    if (has_bias) args.emplace(DNNL_ARG_BIAS, memory(g.Bias(), engine, bias.untyped_data()));
    entry->primitive.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return Fail(e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvBackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> dx,
                            ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                            ffi::Span<const int64_t> dilation, int64_t groups) {
  Geometry g;
  if (auto error = MakeGeometry(dx->dimensions(), kernel.dimensions(), dy.dimensions(), dy.element_type(),
                                strides, padding, dilation, groups, false, false, &g);
      error.failure()) {
    return error;
  }
  if (dx->element_count() == 0) return ffi::Error::Success();
  if (dy.element_count() == 0) {
    std::memset(dx->untyped_data(), 0, dx->size_bytes());
    return ffi::Error::Success();
  }
  try {
    auto entry = Primitives().Get(g.Key("bwd_data"), [&] {
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      auto pd = dnnl::convolution_backward_data::primitive_desc(
          Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(), g.Dst(), g.Strides(),
          g.Dilation(), g.PadL(), g.PadR(), g.Forward(), attr);
      return Entry{dnnl::convolution_backward_data(pd), pd.weights_desc(), pd.scratchpad_desc(),
                   WeightsReorder(g.UserWeights(), pd.weights_desc(), true)};
    });
    auto& engine = Engine();
    dnnl::stream stream(engine);
    memory user_weights(g.UserWeights(), engine, kernel.untyped_data());
    memory weights = user_weights;
    if (entry->weights_reorder) {
      weights = memory(entry->weights, engine, weights_buffer.Get(entry->weights.get_size()));
      entry->weights_reorder.execute(stream, user_weights, weights);
    }
    entry->primitive.execute(stream, {{DNNL_ARG_DIFF_DST, memory(g.Dst(), engine, dy.untyped_data())},
                                      {DNNL_ARG_WEIGHTS, weights},
                                      {DNNL_ARG_DIFF_SRC, memory(g.Src(), engine, dx->untyped_data())},
                                      {DNNL_ARG_SCRATCHPAD, memory(entry->scratchpad, engine, Scratchpad(*entry))}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return Fail(e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvBackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dkernel,
                               ffi::Result<ffi::AnyBuffer> dbias, ffi::Span<const int64_t> strides,
                               ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation,
                               int64_t groups) {
  Geometry g;
  bool has_bias = dbias->element_count() > 0;
  if (auto error = MakeGeometry(x.dimensions(), dkernel->dimensions(), dy.dimensions(), x.element_type(),
                                strides, padding, dilation, groups, has_bias, false, &g);
      error.failure()) {
    return error;
  }
  if (dkernel->element_count() == 0) return ffi::Error::Success();
  if (dy.element_count() == 0 || x.element_count() == 0) {
    std::memset(dkernel->untyped_data(), 0, dkernel->size_bytes());
    if (has_bias) std::memset(dbias->untyped_data(), 0, dbias->size_bytes());
    return ffi::Error::Success();
  }
  try {
    auto entry = Primitives().Get(g.Key("bwd_w"), [&] {
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      auto pd = dnnl::convolution_backward_weights::primitive_desc(
          Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.AnyWeights(), g.Bias(), g.Dst(),
          g.Strides(), g.Dilation(), g.PadL(), g.PadR(), g.Forward(), attr);
      return Entry{dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(), pd.scratchpad_desc(),
                   WeightsReorder(g.UserWeights(), pd.diff_weights_desc(), false)};
    });
    auto& engine = Engine();
    dnnl::stream stream(engine);
    memory user_weights(g.UserWeights(), engine, dkernel->untyped_data());
    memory weights = user_weights;
    if (entry->weights_reorder) {
      weights = memory(entry->weights, engine, weights_buffer.Get(entry->weights.get_size()));
    }
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(g.Src(), engine, x.untyped_data())},
        {DNNL_ARG_DIFF_DST, memory(g.Dst(), engine, dy.untyped_data())},
        {DNNL_ARG_DIFF_WEIGHTS, weights},
        {DNNL_ARG_SCRATCHPAD, memory(entry->scratchpad, engine, Scratchpad(*entry))}};
    if (has_bias) args.emplace(DNNL_ARG_DIFF_BIAS, memory(g.Bias(), engine, dbias->untyped_data()));
    entry->primitive.execute(stream, args);
    if (entry->weights_reorder) entry->weights_reorder.execute(stream, weights, user_weights);
    stream.wait();
  } catch (const dnnl::error& e) {
    return Fail(e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

// The handlers are the library's interface: visible however it is compiled.
#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(imgcls_onednn_conv_fwd, ConvForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<int64_t>("groups")
                                  .Attr<bool>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(imgcls_onednn_conv_bwd_data, ConvBackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<int64_t>("groups"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(imgcls_onednn_conv_bwd_w, ConvBackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<int64_t>("groups"));

// The oneDNN version this library runs with, "major.minor.patch", and whether it loaded at all.
extern "C" const char* imgcls_onednn_version() {
  static std::string version = [] {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  }();
  return version.c_str();
}

#pragma GCC visibility pop
