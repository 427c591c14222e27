// 2-D convolutions on the CPU through oneDNN, as XLA FFI handlers called from jitted JAX code.
//
// Three handlers, one per pass of a training step (imgcls/models/onednn.py wraps them in a
// jax.custom_vjp):
//   imgcls_onednn_conv_fwd      y  = conv(x, w) [+ b] [relu]
//   imgcls_onednn_conv_bwd_data dx = conv_transpose(dy, w)
//   imgcls_onednn_conv_bwd_w    dw [, db] from x and dy
// and two for max pooling (float32): imgcls_onednn_max_pool_fwd (y and oneDNN's workspace, where
// each window's maximum was) and imgcls_onednn_max_pool_bwd (dx from dy and that workspace), split
// in halves of the batch as the convolutions are.
// Activations are NHWC and kernels HWIO (XLA's layouts for flax's convolutions; a grouped kernel
// is HW(I/G)O, oneDNN's hwigo) at the call boundary. oneDNN picks the kernel's inner layout
// (`any`), reordered here each call: kernels are small beside activations. The activations stay
// NHWC (IMGCLS_ONEDNN_LAYOUT=blocked takes oneDNN's blocked layout, reordered on each call; =auto
// whichever ran faster on a convolution's first call, see `Choose`). Primitives are
// built once per convolution and kept (`Cache`); scratchpad and reorder buffers per thread.
// A batch of two or more runs as two halves, each on one thread with oneDNN single-threaded: the
// caller's, and one of XLA's pool if it is free, else the caller again (`Convolve`), so that the
// convolutions share the cores with XLA's fusions instead of oversubscribing them. Otherwise
// (one image, the blocked layouts) a convolution runs on oneDNN's OpenMP team of every core, one
// at a time (`Run`).
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

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

// A 64-byte aligned buffer, grown as needed.
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

dnnl::primitive_attr UserScratchpadAttr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

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

  dnnl::convolution_forward::primitive_desc Forward(const memory::desc& src, const memory::desc& dst) const {
    dnnl::primitive_attr attr = UserScratchpadAttr();
    if (relu) {
      dnnl::post_ops ops;
      ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      attr.set_post_ops(ops);
    }
    return dnnl::convolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
        AnyWeights(), Bias(), dst, Strides(), Dilation(), PadL(), PadR(), attr);
  }
};

// Primitives by convolution (shapes, geometry, dtype, layout), built once: building one takes
// longer than running a small one.
template <typename T>
class Cache {
 public:
  template <typename Make>
  std::shared_ptr<const T> Get(const std::string& key, Make make) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = entries_.find(key);
      if (it != entries_.end()) return it->second;
    }
    auto entry = std::make_shared<const T>(make());
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.emplace(key, entry).first->second;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<const T>> entries_;
};

// One tensor argument of a primitive: the caller's layout, the primitive's, and the reorder
// between them (empty where they are the same), into the primitive for an input, out of it for
// an output.
struct Slot {
  int arg;
  memory::desc user, inner;
  bool output;
  dnnl::reorder reorder;
};

Slot MakeSlot(int arg, const memory::desc& user, const memory::desc& inner, bool output) {
  Slot slot{arg, user, inner, output, dnnl::reorder()};
  if (user != inner) {
    auto& engine = Engine();
    slot.reorder = output ? dnnl::reorder(dnnl::reorder::primitive_desc(engine, inner, engine, user))
                          : dnnl::reorder(dnnl::reorder::primitive_desc(engine, user, engine, inner));
  }
  return slot;
}

// A primitive and its arguments' slots, built once per convolution (`Cache`).
struct Entry {
  dnnl::primitive primitive;
  memory::desc scratchpad;
  std::vector<Slot> slots;
};

Cache<Entry>& Primitives() {
  static Cache<Entry> cache;
  return cache;
}

// The scratchpad and the slots' reorder buffers, one set per thread (split convolutions run
// their halves on two threads at once).
constexpr int kMaxSlots = 4;
thread_local Buffer scratch_buffer, slot_buffers[kMaxSlots], partial_buffer;

// One convolution at a time: each runs on every core (oneDNN's OpenMP team), and XLA would
// otherwise start independent ones together (a layer's two gradients), oversubscribing the cores;
// they then share one set of buffers.
std::mutex& RunMutex() {
  static std::mutex mutex;
  return mutex;
}

// Runs the primitive on the caller's buffers (one per slot), reordering where its layouts differ,
// on oneDNN's OpenMP team of every core, one convolution at a time.
void RunUnlocked(const Entry& entry, void* const* data);
void Run(const Entry& entry, void* const* data) {
  std::lock_guard<std::mutex> lock(RunMutex());
  RunUnlocked(entry, data);
}

void RunUnlocked(const Entry& entry, void* const* data) {
  auto& engine = Engine();
  dnnl::stream stream(engine);
  std::unordered_map<int, memory> args;
  std::vector<std::pair<const Slot*, std::pair<memory, memory>>> outputs;
  for (size_t i = 0; i < entry.slots.size(); ++i) {
    const Slot& slot = entry.slots[i];
    memory user(slot.user, engine, data[i]);
    if (!slot.reorder) {
      args.emplace(slot.arg, user);
      continue;
    }
    memory inner(slot.inner, engine, slot_buffers[i].Get(slot.inner.get_size()));
    if (slot.output) {
      outputs.push_back({&slot, {inner, user}});
    } else {
      slot.reorder.execute(stream, user, inner);
    }
    args.emplace(slot.arg, inner);
  }
  args.emplace(DNNL_ARG_SCRATCHPAD, memory(entry.scratchpad, engine, scratch_buffer.Get(entry.scratchpad.get_size())));
  entry.primitive.execute(stream, args);
  for (auto& [slot, memories] : outputs) slot->reorder.execute(stream, memories.first, memories.second);
  stream.wait();
}

// Activation layouts: NHWC as the caller holds them (the default), oneDNN's own choice (blocked,
// reordered on each call), or whichever of the two runs faster, timed on the first call of each
// convolution. Timing is not the default: a resumed run could pick another layout than the run
// it resumes, and its results would then differ by float rounding.
enum class Layout : int { kAuto = 0, kNhwc = 1, kBlocked = 2 };
std::atomic<int> layout_choice{-1};

Layout ChosenLayout() {
  int choice = layout_choice.load();
  if (choice < 0) {
    const char* env = std::getenv("IMGCLS_ONEDNN_LAYOUT");
    std::string value = env ? env : "nhwc";
    choice = value == "nhwc" ? 1 : value == "blocked" ? 2 : 0;
    layout_choice.store(choice);
  }
  return Layout(choice);
}

double Seconds(const Entry& entry, void* const* data, int repeats) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto start = std::chrono::steady_clock::now();
    Run(entry, data);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

// The entry of the layout asked for; with kAuto the faster of the two on this call's buffers
// (outputs are written while timing: the call that follows writes them again).
template <typename Make>
std::shared_ptr<const Entry> Choose(const Geometry& g, const char* op, void* const* data, Make make) {
  Layout layout = ChosenLayout();
  std::string key = g.Key(op) + ",layout=" + std::to_string(int(layout));
  return Primitives().Get(key, [&] {
    if (layout != Layout::kAuto) return make(layout == Layout::kBlocked);
    Entry nhwc = make(false), blocked = make(true);
    bool same = true;
    for (size_t i = 0; i < nhwc.slots.size(); ++i) same = same && nhwc.slots[i].inner == blocked.slots[i].inner;
    if (same) return nhwc;
    Run(nhwc, data);  // warm both: first touches of buffers, caches
    Run(blocked, data);
    return Seconds(blocked, data, 2) < Seconds(nhwc, data, 2) ? blocked : nhwc;
  });
}

memory::desc Activations(const Geometry& g, bool output_side, bool blocked) {
  memory::dims dims = output_side ? memory::dims{g.n, g.o, g.oh, g.ow} : memory::dims{g.n, g.c, g.h, g.w};
  return memory::desc(dims, g.dtype, blocked ? tag::any : tag::nhwc);
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

// Whether an input gradient `dx` is already done: it is empty, or `dy` is (then it is zeros).
bool NothingToCompute(const ffi::AnyBuffer& dy, ffi::Result<ffi::AnyBuffer>& dx) {
  if (dx->element_count() == 0) return true;
  if (dy.element_count() > 0) return false;
  std::memset(dx->untyped_data(), 0, dx->size_bytes());
  return true;
}

// OpenMP's team size for the calling thread, from the libgomp oneDNN loaded (null: not found).
using SetThreads = void (*)(int);
using GetThreads = int (*)();
SetThreads omp_set_threads = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
GetThreads omp_get_threads = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "omp_get_max_threads"));

// Runs `work` with oneDNN on this thread alone (a primitive built so also runs single-threaded).
template <typename Work>
auto Alone(Work work) {
  int threads = omp_get_threads();
  omp_set_threads(1);
  struct Restore {
    int threads;
    ~Restore() { omp_set_threads(threads); }
  } restore{threads};
  return work();
}

// Whether convolutions run as two halves of the batch on XLA's own threads (the default; off
// with IMGCLS_ONEDNN_SPLIT=0): oneDNN's OpenMP team of every core otherwise shares the cores with
// the XLA fusions that run beside the convolution (InceptionV3's branches), and a team waits for
// its slowest thread.
std::atomic<int> split_choice{-1};

bool SplitEnabled() {
  if (omp_set_threads == nullptr || omp_get_threads == nullptr) return false;
  int choice = split_choice.load();
  if (choice < 0) {
    const char* env = std::getenv("IMGCLS_ONEDNN_SPLIT");
    choice = env && std::string(env) == "0" ? 0 : 1;
    split_choice.store(choice);
  }
  return choice == 1;
}

// The second half of a split convolution, run by whichever thread claims it first: a thread of
// XLA's pool, or the caller once its own half is done.
struct SecondHalf {
  std::shared_ptr<const Entry> entry;
  void* data[kMaxSlots];
  std::atomic<bool> claimed{false};
  std::mutex mutex;
  std::condition_variable finished;
  bool done = false;
  std::string error;

  void RunIfUnclaimed() {
    if (claimed.exchange(true)) return;
    try {
      Alone([&] { RunUnlocked(*entry, data); });
    } catch (const dnnl::error& e) {
      error = e.what();
    }
    std::lock_guard<std::mutex> lock(mutex);
    done = true;
    finished.notify_all();
  }
};

// Runs the convolution `make(geometry, blocked)` builds (once, see `Choose`) on the call's
// buffers. `image_elements[i]`: elements per image of slot i (0 for the kernel and bias). Split
// in halves of the batch where `SplitEnabled`; `partial_sums` (the kernel gradient) then takes
// the second half's kernel and bias gradients in a buffer of its own and adds them.
template <typename Make>
ffi::Error Convolve(ffi::ThreadPool& pool, const Geometry& g, const char* op, void* const* data,
                    const int64_t* image_elements, size_t slots, bool partial_sums, Make make) {
  try {
    bool split = SplitEnabled() && ChosenLayout() == Layout::kNhwc && g.n >= 2 &&
                 !(partial_sums && g.dtype != memory::data_type::f32);
    if (!split) {
      Run(*Choose(g, op, data, [&](bool blocked) { return make(g, blocked); }), data);
      return ffi::Error::Success();
    }
    Geometry first = g, second = g;
    first.n = (g.n + 1) / 2;
    second.n = g.n - first.n;
    auto alone = [&](const Geometry& half) {
      return Primitives().Get(half.Key(op) + ",alone", [&] { return Alone([&] { return make(half, false); }); });
    };
    auto first_entry = alone(first);
    auto task = std::make_shared<SecondHalf>();
    task->entry = alone(second);
    size_t element = g.dtype == memory::data_type::f32 ? 4 : 2;
    for (size_t i = 0; i < slots; ++i) {
      task->data[i] = static_cast<char*>(data[i]) + first.n * image_elements[i] * element;
    }
    int64_t kernel_elements = g.kh * g.kw * (g.c / g.groups) * g.o, bias_elements = g.bias ? g.o : 0;
    if (partial_sums) {  // slots 2 and 3: the kernel's and the bias's gradients
      float* partial = static_cast<float*>(partial_buffer.Get((kernel_elements + bias_elements) * sizeof(float)));
      task->data[2] = partial;
      task->data[3] = partial + kernel_elements;
    }
    pool.Schedule([task] { task->RunIfUnclaimed(); });
    Alone([&] { RunUnlocked(*first_entry, data); });
    task->RunIfUnclaimed();  // a no-op where a pool thread has taken it
    {
      std::unique_lock<std::mutex> lock(task->mutex);
      task->finished.wait(lock, [&] { return task->done; });
    }
    if (!task->error.empty()) return Fail(task->error);
    if (partial_sums) {
      const float* partial = static_cast<const float*>(task->data[2]);
      float* kernel_grad = static_cast<float*>(data[2]);
      for (int64_t i = 0; i < kernel_elements; ++i) kernel_grad[i] += partial[i];
      float* bias_grad = static_cast<float*>(data[3]);
      for (int64_t i = 0; i < bias_elements; ++i) bias_grad[i] += partial[kernel_elements + i];
    }
  } catch (const dnnl::error& e) {
    return Fail(e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::AnyBuffer bias,
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
  void* data[] = {x.untyped_data(), kernel.untyped_data(), y->untyped_data(), bias.untyped_data()};
  const int64_t per_image[] = {g.h * g.w * g.c, 0, g.oh * g.ow * g.o, 0};
  return Convolve(pool, g, "fwd", data, per_image, 4, false, [](const Geometry& g, bool blocked) {
    auto pd = g.Forward(Activations(g, false, blocked), Activations(g, true, blocked));
    std::vector<Slot> slots{MakeSlot(DNNL_ARG_SRC, g.Src(), pd.src_desc(), false),
                            MakeSlot(DNNL_ARG_WEIGHTS, g.UserWeights(), pd.weights_desc(), false),
                            MakeSlot(DNNL_ARG_DST, g.Dst(), pd.dst_desc(), true)};
    if (g.bias) slots.push_back(MakeSlot(DNNL_ARG_BIAS, g.Bias(), pd.bias_desc(), false));
    return Entry{dnnl::convolution_forward(pd), pd.scratchpad_desc(), slots};
  });
}

ffi::Error ConvBackwardData(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> dx,
                            ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                            ffi::Span<const int64_t> dilation, int64_t groups) {
  Geometry g;
  if (auto error = MakeGeometry(dx->dimensions(), kernel.dimensions(), dy.dimensions(), dy.element_type(),
                                strides, padding, dilation, groups, false, false, &g);
      error.failure()) {
    return error;
  }
  if (NothingToCompute(dy, dx)) return ffi::Error::Success();
  void* data[] = {dy.untyped_data(), kernel.untyped_data(), dx->untyped_data()};
  const int64_t per_image[] = {g.oh * g.ow * g.o, 0, g.h * g.w * g.c};
  return Convolve(pool, g, "bwd_data", data, per_image, 3, false, [](const Geometry& g, bool blocked) {
    auto src = Activations(g, false, blocked), dst = Activations(g, true, blocked);
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src, g.AnyWeights(), dst, g.Strides(),
        g.Dilation(), g.PadL(), g.PadR(), g.Forward(src, dst), UserScratchpadAttr());
    return Entry{dnnl::convolution_backward_data(pd), pd.scratchpad_desc(),
                 {MakeSlot(DNNL_ARG_DIFF_DST, g.Dst(), pd.diff_dst_desc(), false),
                  MakeSlot(DNNL_ARG_WEIGHTS, g.UserWeights(), pd.weights_desc(), false),
                  MakeSlot(DNNL_ARG_DIFF_SRC, g.Src(), pd.diff_src_desc(), true)}};
  });
}

ffi::Error ConvBackwardWeights(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dkernel,
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
  void* data[] = {x.untyped_data(), dy.untyped_data(), dkernel->untyped_data(), dbias->untyped_data()};
  const int64_t per_image[] = {g.h * g.w * g.c, g.oh * g.ow * g.o, 0, 0};
  return Convolve(pool, g, "bwd_w", data, per_image, 4, true, [](const Geometry& g, bool blocked) {
    auto src = Activations(g, false, blocked), dst = Activations(g, true, blocked);
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src, g.AnyWeights(), g.Bias(), dst,
        g.Strides(), g.Dilation(), g.PadL(), g.PadR(), g.Forward(src, dst), UserScratchpadAttr());
    std::vector<Slot> slots{MakeSlot(DNNL_ARG_SRC, g.Src(), pd.src_desc(), false),
                            MakeSlot(DNNL_ARG_DIFF_DST, g.Dst(), pd.diff_dst_desc(), false),
                            MakeSlot(DNNL_ARG_DIFF_WEIGHTS, g.UserWeights(), pd.diff_weights_desc(), true)};
    if (g.bias) slots.push_back(MakeSlot(DNNL_ARG_DIFF_BIAS, g.Bias(), pd.diff_bias_desc(), true));
    return Entry{dnnl::convolution_backward_weights(pd), pd.scratchpad_desc(), slots};
  });
}


// Max pooling: a pooling "geometry" is a convolution's with the window as the kernel, the same
// channels out as in, no dilation, no groups. Float32 only (the workspace halves assume 4-byte
// elements). The workspace (where each window's maximum was) goes from the forward to the backward
// pass in an int32 buffer of the output's shape, enough for oneDNN's (u8, or s32 per output).
ffi::Error PoolGeometry(ffi::AnyBuffer::Dimensions x, ffi::AnyBuffer::Dimensions y, ffi::DataType dtype,
                        ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                        ffi::Span<const int64_t> padding, Geometry* g) {
  if (x.size() != 4 || y.size() != 4 || window.size() != 2 || strides.size() != 2 || padding.size() != 4) {
    return Fail("max pooling expects NHWC tensors, 2 window sizes, 2 strides, 4 pads");
  }
  if (dtype != ffi::DataType::F32) return Fail("max pooling runs in float32 only");
  *g = Geometry{x[0], x[1], x[2], x[3], window[0], window[1], x[3], y[1], y[2],
                strides[0], strides[1], padding[0], padding[1], padding[2], padding[3],
                1, 1, 1, memory::data_type::f32, false, false};
  if (y[0] != g->n || y[3] != g->c) return Fail("max pooling's output must have the input's batch and channels");
  return ffi::Error::Success();
}

dnnl::pooling_forward::primitive_desc PoolForward(const Geometry& g) {
  return dnnl::pooling_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::pooling_max, g.Src(), g.Dst(),
      g.Strides(), {g.kh, g.kw}, {0, 0}, g.PadL(), g.PadR(), UserScratchpadAttr());
}

memory::desc Workspace(const dnnl::pooling_forward::primitive_desc& pd, const Geometry& g) {
  memory::desc workspace = pd.workspace_desc();
  if (workspace.get_size() > size_t(g.n * g.oh * g.ow * g.o) * 4) {
    throw dnnl::error(dnnl_runtime_error, "oneDNN's pooling workspace is larger than the buffer for it");
  }
  return workspace;
}

ffi::Error MaxPoolForward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                          ffi::Result<ffi::AnyBuffer> workspace, ffi::Span<const int64_t> window,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  Geometry g;
  if (auto error = PoolGeometry(x.dimensions(), y->dimensions(), x.element_type(), window, strides, padding, &g);
      error.failure()) {
    return error;
  }
  if (y->element_count() == 0) return ffi::Error::Success();
  void* data[] = {x.untyped_data(), y->untyped_data(), workspace->untyped_data()};
  const int64_t per_image[] = {g.h * g.w * g.c, g.oh * g.ow * g.c, g.oh * g.ow * g.c};
  return Convolve(pool, g, "max_pool_fwd", data, per_image, 3, false, [](const Geometry& g, bool) {
    auto pd = PoolForward(g);
    return Entry{dnnl::pooling_forward(pd), pd.scratchpad_desc(),
                 {MakeSlot(DNNL_ARG_SRC, g.Src(), pd.src_desc(), false),
                  MakeSlot(DNNL_ARG_DST, g.Dst(), pd.dst_desc(), true),
                  MakeSlot(DNNL_ARG_WORKSPACE, Workspace(pd, g), pd.workspace_desc(), true)}};
  });
}

ffi::Error MaxPoolBackward(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer workspace,
                           ffi::Result<ffi::AnyBuffer> dx, ffi::Span<const int64_t> window,
                           ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  Geometry g;
  if (auto error = PoolGeometry(dx->dimensions(), dy.dimensions(), dy.element_type(), window, strides, padding, &g);
      error.failure()) {
    return error;
  }
  if (NothingToCompute(dy, dx)) return ffi::Error::Success();
  void* data[] = {dy.untyped_data(), workspace.untyped_data(), dx->untyped_data()};
  const int64_t per_image[] = {g.oh * g.ow * g.c, g.oh * g.ow * g.c, g.h * g.w * g.c};
  return Convolve(pool, g, "max_pool_bwd", data, per_image, 3, false, [](const Geometry& g, bool) {
    auto forward = PoolForward(g);
    auto pd = dnnl::pooling_backward::primitive_desc(
        Engine(), dnnl::algorithm::pooling_max, g.Src(), g.Dst(), g.Strides(), {g.kh, g.kw}, {0, 0},
        g.PadL(), g.PadR(), forward, UserScratchpadAttr());
    return Entry{dnnl::pooling_backward(pd), pd.scratchpad_desc(),
                 {MakeSlot(DNNL_ARG_DIFF_DST, g.Dst(), pd.diff_dst_desc(), false),
                  MakeSlot(DNNL_ARG_WORKSPACE, Workspace(forward, g), pd.workspace_desc(), false),
                  MakeSlot(DNNL_ARG_DIFF_SRC, g.Src(), pd.diff_src_desc(), true)}};
  });
}

}  // namespace

// The handlers are the library's interface: visible however it is compiled.
#pragma GCC visibility push(default)

XLA_FFI_DEFINE_HANDLER_SYMBOL(imgcls_onednn_conv_fwd, ConvForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
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
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<int64_t>("groups"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(imgcls_onednn_conv_bwd_w, ConvBackwardWeights,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  .Attr<int64_t>("groups"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(imgcls_onednn_max_pool_fwd, MaxPoolForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("window")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(imgcls_onednn_max_pool_bwd, MaxPoolBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("window")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding"));

// The activations' layout for convolutions met from now on: 0 by measurement, 1 NHWC, 2 blocked.
extern "C" void imgcls_onednn_set_layout(int layout) { layout_choice.store(layout); }

// 1: split batches in halves on XLA's threads (the default), 0: oneDNN's team of every core.
extern "C" void imgcls_onednn_set_split(int split) { split_choice.store(split ? 1 : 0); }

// 1 where this CPU runs oneDNN's bfloat16 convolutions (AVX-512 or newer), else 0.
extern "C" int imgcls_onednn_supports_bfloat16() {
  try {
    Geometry g{1, 8, 8, 16, 3, 3, 16, 8, 8, 1, 1, 1, 1, 1, 1, 1, 1, 1, memory::data_type::bf16, false, false};
    g.Forward(g.Src(), g.Dst());
    return 1;
  } catch (const dnnl::error&) {
    return 0;
  }
}

// The oneDNN version this library runs with, "major.minor.patch", and whether it loaded at all.
extern "C" const char* imgcls_onednn_version() {
  static std::string version = [] {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  }();
  return version.c_str();
}

#pragma GCC visibility pop
