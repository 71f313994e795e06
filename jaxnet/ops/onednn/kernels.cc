// oneDNN kernels for jaxnet, as XLA FFI custom calls (CPU, float32).
//
// The three convolutions of a conv layer's training step:
//   jaxnet_onednn_conv_fwd          y  = conv(x, w) [+ b] [then ReLU]      (post-ops fused by oneDNN)
//   jaxnet_onednn_conv_bwd_data     dx = the "full" convolution of dy with the flipped filters
//   jaxnet_onednn_conv_bwd_weights  dw = the correlation of x with dy      [+ db = sum of dy]
// or, for a layer whose three convolutions all run Winograd (a "Winograd pair", below), two calls:
//   jaxnet_onednn_conv_fwd_winograd y and x in oneDNN's blocked layout (the backward's residual)
//   jaxnet_onednn_conv_bwd_winograd dx, dw [, db] from that x, dy and w
// and spatial batch norm in train mode, optionally with the ReLU after it fused in:
//   jaxnet_onednn_bn_fwd            y = [ReLU](gamma * (x - mean) / sqrt(var + eps) + beta), mean, var
//                                   (biased, over N, H, W) and, with ReLU, oneDNN's workspace (its mask)
//   jaxnet_onednn_bn_bwd            dx, dgamma, dbeta from x, mean, var, gamma, dy [and the workspace]
// Activations are NHWC (oneDNN `nhwc`), filters HWIO as jaxnet stores them (oneDNN `hwio`).  Each
// convolution primitive is created for its shapes with `format_tag::any` weights (oneDNN picks its blocked
// layout; the HWIO filters are reordered into it per call, or the gradient out of it) and cached,
// keyed by the shapes, strides, paddings and flags.  With the `wino` attribute set, a 3x3, stride-1,
// padding-1 convolution with at least 32 input channels and channel counts that are multiples of 16
// runs oneDNN's Winograd F(4x4, 3x3) (oneDNN <= 3.0 has it for AVX-512; elsewhere, or when oneDNN
// has no such primitive, the direct one): its activations are reordered between NHWC and oneDNN's
// blocked nChw16c in scratch buffers around the call.  One engine for the process; one stream and
// one scratch buffer per calling thread (scratchpads are user-managed, so concurrent calls from
// XLA's threads never share one); kernels run one at a time, each on oneDNN's own threads (its
// default thread count: every core, as XLA's CPU client).  Strides and explicit (top, bottom,
// left, right) paddings; no dilation, one group.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream s(Engine());
  return s;
}

// A 64-byte aligned scratch area per thread and slot, grown as needed.
struct Scratch {
  void* p = nullptr;
  size_t n = 0;
  ~Scratch() { std::free(p); }
  void* get(size_t bytes) {
    if (bytes == 0) return nullptr;
    if (bytes > n) {
      std::free(p);
      n = (bytes + 63) / 64 * 64;
      p = std::aligned_alloc(64, n);
      if (!p) { n = 0; throw std::bad_alloc(); }
    }
    return p;
  }
};

void* ScratchBuf(int slot, size_t bytes) {
  thread_local Scratch s[6];  // 0 weights, 1 reorder scratch, 2 primitive scratch, 3-4 activations, 5 dW
  return s[slot].get(bytes);
}

struct Geom {
  int64_t n, h, w, c, kh, kw, o, ho, wo, sh, sw, pt, pb, pl, pr;
  std::string Key(const char* kind, int64_t flags) const {
    std::string k(kind);
    for (int64_t v : {n, h, w, c, kh, kw, o, ho, wo, sh, sw, pt, pb, pl, pr, flags}) {
      k += ',';
      k += std::to_string(v);
    }
    return k;
  }
  memory::desc Src() const { return memory::desc({n, c, h, w}, dt::f32, tag::nhwc); }
  memory::desc Dst() const { return memory::desc({n, o, ho, wo}, dt::f32, tag::nhwc); }
  memory::desc UserWeights() const { return memory::desc({o, c, kh, kw}, dt::f32, tag::hwio); }
  memory::desc AnyWeights() const { return memory::desc({o, c, kh, kw}, dt::f32, tag::any); }
  memory::desc Bias(bool on) const { return on ? memory::desc({o}, dt::f32, tag::a) : memory::desc(); }
  memory::dims Strides() const { return {sh, sw}; }
  memory::dims PadL() const { return {pt, pl}; }
  memory::dims PadR() const { return {pb, pr}; }
  memory::desc AnySrc() const { return memory::desc({n, c, h, w}, dt::f32, tag::any); }
  memory::desc AnyDst() const { return memory::desc({n, o, ho, wo}, dt::f32, tag::any); }
  // Where jaxnet asks for oneDNN's Winograd F(4x4, 3x3): 3x3 filters, stride 1, one pixel of padding
  // on every side, channel counts that are multiples of 16 (its AVX-512 kernels' vector width), and
  // at least 32 input channels: below that the reorders to and from its blocked layout cost more
  // than the arithmetic it saves (16 -> 32 channels at 32x32, batch 256: 0.89x the direct kernel's
  // speed; 32 -> 32 at 16x16: 1.09x; 64 -> 128 at 8x8: 1.55x; docs/performance.md).
  bool WinogradShape() const {
    return kh == 3 && kw == 3 && sh == 1 && sw == 1 && pt == 1 && pb == 1 && pl == 1 && pr == 1 && c % 16 == 0 &&
           o % 16 == 0 && c >= 32;
  }
};


dnnl::primitive_attr UserScratch() {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
}

dnnl::convolution_forward::primitive_desc FwdPd(const Geom& g, bool bias, bool relu, bool wino = false) {
  dnnl::primitive_attr attr = UserScratch();
  if (relu) {
    dnnl::post_ops po;
    po.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(po);
  }
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training,
      wino ? dnnl::algorithm::convolution_winograd : dnnl::algorithm::convolution_direct, wino ? g.AnySrc() : g.Src(),
      g.AnyWeights(), g.Bias(bias), wino ? g.AnyDst() : g.Dst(), g.Strides(), g.PadL(), g.PadR(), attr);
}

// A primitive, the reorder between jaxnet's HWIO filters and the primitive's weight layout (or
// none when they agree), and the scratch sizes.
// An activation in NHWC (jaxnet's layout) and the primitive's layout for it, with the reorder
// between the two when they differ (the Winograd primitives take oneDNN's blocked nChw16c).
struct Act {
  bool reorder = false;
  memory::desc user, prim;
  dnnl::reorder r;
  size_t scratch = 0;
};

struct Entry {
  dnnl::primitive prim;
  memory::desc wdesc;  // the primitive's weights (or diff weights) layout
  bool reorder = false;
  dnnl::reorder wreorder;
  size_t scratch = 0, rscratch = 0;
  Act in1, in2, out;   // the activations: up to two inputs, one output (in primitive argument order)
  std::string impl;    // oneDNN's name for the implementation, e.g. "jit_wino_4x3:avx512_core"
};

// One kernel at a time: each already uses every core oneDNN has, and XLA may start two independent
// custom calls at once (a layer's dX and dW); running them together would only oversubscribe.
std::mutex exec_mu;
// The cache of entries of type E (one map and lock per type), keyed by shapes and flags.
template <typename E>
struct Cache {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<E>>& Map() {
    static auto* m = new std::unordered_map<std::string, std::shared_ptr<E>>();
    return *m;
  }
};
template <typename E>
std::mutex Cache<E>::mu;

template <typename Make>
auto Lookup(const std::string& key, Make make) -> std::shared_ptr<decltype(make())> {
  using E = decltype(make());
  {
    std::lock_guard<std::mutex> lock(Cache<E>::mu);
    auto it = Cache<E>::Map().find(key);
    if (it != Cache<E>::Map().end()) return it->second;
  }
  auto e = std::make_shared<E>(make());
  std::lock_guard<std::mutex> lock(Cache<E>::mu);
  return Cache<E>::Map().emplace(key, e).first->second;
}

void SetReorder(Entry& e, const Geom& g, bool to_user) {
  memory::desc user = g.UserWeights();
  e.reorder = !(e.wdesc == user);
  if (!e.reorder) return;
  dnnl::reorder::primitive_desc rpd =
      to_user ? dnnl::reorder::primitive_desc(Engine(), e.wdesc, Engine(), user, UserScratch())
              : dnnl::reorder::primitive_desc(Engine(), user, Engine(), e.wdesc, UserScratch());
  e.wreorder = dnnl::reorder(rpd);
  e.rscratch = rpd.scratchpad_desc().get_size();
}

Act MakeAct(const memory::desc& user, const memory::desc& prim, bool to_user) {
  Act a;
  a.user = user;
  a.prim = prim;
  a.reorder = !(user == prim);
  if (!a.reorder) return a;
  dnnl::reorder::primitive_desc rpd =
      to_user ? dnnl::reorder::primitive_desc(Engine(), prim, Engine(), user, UserScratch())
              : dnnl::reorder::primitive_desc(Engine(), user, Engine(), prim, UserScratch());
  a.r = dnnl::reorder(rpd);
  a.scratch = rpd.scratchpad_desc().get_size();
  return a;
}

// The cache entry of primitive descriptor ``pd`` whose weights (or diff weights) layout is ``wdesc``;
// ``to_user``: its weight reorder goes from that layout to HWIO (diff weights) instead of back.
template <typename Prim, typename Pd>
Entry MakeEntry(const Pd& pd, const memory::desc& wdesc, const Geom& g, bool to_user) {
  Entry en;
  en.prim = Prim(pd);
  en.wdesc = wdesc;
  en.impl = pd.impl_info_str();
  en.scratch = pd.scratchpad_desc().get_size();
  SetReorder(en, g, to_user);
  return en;
}

memory Mem(const memory::desc& d, const void* p) { return memory(d, Engine(), const_cast<void*>(p)); }

// Scratch buffer ``slot`` of this thread as a oneDNN byte memory of ``bytes``.
memory ScratchMem(int slot, size_t bytes);

// The input ``user`` (NHWC) in the primitive's layout: reordered into scratch buffer ``slot``, or
// the user's memory itself.
memory ActIn(const Act& a, dnnl::stream& s, const void* user, int slot) {
  if (!a.reorder) return Mem(a.user, user);
  memory m = Mem(a.prim, ScratchBuf(slot, a.prim.get_size()));
  a.r.execute(s, {{DNNL_ARG_FROM, Mem(a.user, user)}, {DNNL_ARG_TO, m}, {DNNL_ARG_SCRATCHPAD, ScratchMem(1, a.scratch)}});
  return m;
}

// Where the primitive writes its output: scratch buffer ``slot`` when it is reordered to NHWC after.
memory ActOutBuf(const Act& a, void* user, int slot) {
  return a.reorder ? Mem(a.prim, ScratchBuf(slot, a.prim.get_size())) : Mem(a.user, user);
}

void ActOutFinish(const Act& a, dnnl::stream& s, memory prim, void* user) {
  if (a.reorder)
    a.r.execute(s, {{DNNL_ARG_FROM, prim}, {DNNL_ARG_TO, Mem(a.user, user)}, {DNNL_ARG_SCRATCHPAD, ScratchMem(1, a.scratch)}});
}

ffi::Error Fail(const std::string& what) { return ffi::Error(ffi::ErrorCode::kInternal, "jaxnet onednn: " + what); }

template <typename F>
ffi::Error Guard(F f) {
  try {
    f();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return Fail(std::string(e.what()) + " (status " + std::to_string(static_cast<int>(e.status)) + ")");
  } catch (const std::exception& e) {
    return Fail(e.what());
  }
}

Geom MakeGeom(ffi::AnyBuffer::Dimensions xd, ffi::AnyBuffer::Dimensions wd, ffi::AnyBuffer::Dimensions yd,
              int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  // x (N, H, W, C), w (KH, KW, C, O), y (N, Ho, Wo, O)
  return Geom{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2], sh, sw, pt, pb, pl, pr};
}

// Scratch buffer ``slot`` of this thread as a oneDNN byte memory of ``bytes``.
memory ScratchMem(int slot, size_t bytes) {
  return Mem(memory::desc({(int64_t)bytes}, dt::u8, tag::a), ScratchBuf(slot, bytes));
}

// The user's HWIO weights in the primitive's blocked layout (reordered into scratch buffer 0),
// or the user's memory itself when the primitive takes HWIO as is.
memory BlockedWeights(const Entry& e, dnnl::stream& s, memory user) {
  if (!e.reorder) return user;
  memory blocked = Mem(e.wdesc, ScratchBuf(0, e.wdesc.get_size()));
  e.wreorder.execute(s, {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, blocked},
                         {DNNL_ARG_SCRATCHPAD, ScratchMem(1, e.rscratch)}});
  return blocked;
}

// Tries ``make_wino`` (a Winograd entry) when the shape allows it and falls back to ``make_direct``
// when oneDNN has no Winograd kernel for it on this CPU (it throws at primitive creation).
template <typename MW, typename MD>
Entry WinogradOr(const Geom& g, int64_t wino, MW make_wino, MD make_direct) {
  if (wino && g.WinogradShape()) {
    try {
      return make_wino();
    } catch (const dnnl::error&) {
    }
  }
  return make_direct();
}

std::shared_ptr<Entry> FwdEntry(const Geom& g, int64_t relu, int64_t has_bias, int64_t wino) {
  return Lookup(g.Key("fwd", wino * 4 + relu * 2 + has_bias), [&] {
    auto make = [&](bool wg) {
      auto pd = FwdPd(g, has_bias, relu, wg);
      Entry en = MakeEntry<dnnl::convolution_forward>(pd, pd.weights_desc(), g, /*to_user=*/false);
      en.in1 = MakeAct(g.Src(), pd.src_desc(), false);
      en.out = MakeAct(g.Dst(), pd.dst_desc(), true);
      return en;
    };
    return WinogradOr(g, wino, [&] { return make(true); }, [&] { return make(false); });
  });
}

void RunFwd(const Geom& g, const float* x, const float* w, const float* b, float* y, int64_t relu,
            int64_t has_bias, int64_t wino) {
  auto e = FwdEntry(g, relu, has_bias, wino);
  std::lock_guard<std::mutex> exec(exec_mu);
  dnnl::stream& s = Stream();
  memory wm = BlockedWeights(*e, s, Mem(g.UserWeights(), w));
  memory xm = ActIn(e->in1, s, x, 3), ym = ActOutBuf(e->out, y, 4);
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym},
      {DNNL_ARG_SCRATCHPAD, ScratchMem(2, e->scratch)}};
  if (has_bias) args.emplace(DNNL_ARG_BIAS, Mem(g.Bias(true), b));
  e->prim.execute(s, args);
  ActOutFinish(e->out, s, ym, y);
  s.wait();
}

// y = conv(x, w) [+ b] [ReLU]
ffi::Error ConvFwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                       int64_t pr, int64_t relu, int64_t has_bias, int64_t wino) {
  if (x.dimensions().size() != 4 || w.dimensions().size() != 4 || y->dimensions().size() != 4)
    return ffi::Error::InvalidArgument("jaxnet onednn conv_fwd: x, w and y must be rank 4");
  Geom g = MakeGeom(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr);
  return Guard([&] { RunFwd(g, x.typed_data(), w.typed_data(), b.typed_data(), y->typed_data(), relu, has_bias, wino); });
}

std::shared_ptr<Entry> BwdDataEntry(const Geom& g, int64_t wino) {
  return Lookup(g.Key("bwd_data", wino), [&] {
    auto make = [&](bool wg) {
      auto hint = FwdPd(g, false, false, wg);
      dnnl::convolution_backward_data::primitive_desc pd(
          Engine(), wg ? dnnl::algorithm::convolution_winograd : dnnl::algorithm::convolution_direct,
          wg ? g.AnySrc() : g.Src(), g.AnyWeights(), wg ? g.AnyDst() : g.Dst(), g.Strides(), g.PadL(),
          g.PadR(), hint, UserScratch());
      Entry en = MakeEntry<dnnl::convolution_backward_data>(pd, pd.weights_desc(), g, /*to_user=*/false);
      en.in1 = MakeAct(g.Dst(), pd.diff_dst_desc(), false);
      en.out = MakeAct(g.Src(), pd.diff_src_desc(), true);
      return en;
    };
    return WinogradOr(g, wino, [&] { return make(true); }, [&] { return make(false); });
  });
}

// dx = conv_backward_data(dy, w)
ffi::Error ConvBwdDataImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                           int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t wino) {
  if (dy.dimensions().size() != 4 || w.dimensions().size() != 4 || dx->dimensions().size() != 4)
    return ffi::Error::InvalidArgument("jaxnet onednn conv_bwd_data: dy, w and dx must be rank 4");
  Geom g = MakeGeom(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Guard([&] {
    auto e = BwdDataEntry(g, wino);
    std::lock_guard<std::mutex> exec(exec_mu);
    dnnl::stream& s = Stream();
    memory wm = BlockedWeights(*e, s, Mem(g.UserWeights(), w.typed_data()));
    memory dym = ActIn(e->in1, s, dy.typed_data(), 3), dxm = ActOutBuf(e->out, dx->typed_data(), 4);
    e->prim.execute(s, {{DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_SRC, dxm},
                        {DNNL_ARG_SCRATCHPAD, ScratchMem(2, e->scratch)}});
    ActOutFinish(e->out, s, dxm, dx->typed_data());
    s.wait();
  });
}

std::shared_ptr<Entry> BwdWeightsEntry(const Geom& g, int64_t has_bias, int64_t wino) {
  return Lookup(g.Key("bwd_weights", wino * 2 + has_bias), [&] {
    auto make = [&](bool wg) {
      auto hint = FwdPd(g, has_bias, false, wg);
      dnnl::convolution_backward_weights::primitive_desc pd(
          Engine(), wg ? dnnl::algorithm::convolution_winograd : dnnl::algorithm::convolution_direct,
          wg ? g.AnySrc() : g.Src(), g.AnyWeights(), g.Bias(has_bias), wg ? g.AnyDst() : g.Dst(),
          g.Strides(), g.PadL(), g.PadR(), hint, UserScratch());
      Entry en = MakeEntry<dnnl::convolution_backward_weights>(pd, pd.diff_weights_desc(), g, /*to_user=*/true);
      en.in1 = MakeAct(g.Src(), pd.src_desc(), false);
      en.in2 = MakeAct(g.Dst(), pd.diff_dst_desc(), false);
      return en;
    };
    return WinogradOr(g, wino, [&] { return make(true); }, [&] { return make(false); });
  });
}

// dw = conv_backward_weights(x, dy) [, db = sum dy]
ffi::Error ConvBwdWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                              ffi::ResultBuffer<ffi::F32> db, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                              int64_t pl, int64_t pr, int64_t has_bias, int64_t wino) {
  if (x.dimensions().size() != 4 || dy.dimensions().size() != 4 || dw->dimensions().size() != 4)
    return ffi::Error::InvalidArgument("jaxnet onednn conv_bwd_weights: x, dy and dw must be rank 4");
  Geom g = MakeGeom(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Guard([&] {
    auto e = BwdWeightsEntry(g, has_bias, wino);
    std::lock_guard<std::mutex> exec(exec_mu);
    dnnl::stream& s = Stream();
    memory user = Mem(g.UserWeights(), dw->typed_data());
    memory wm = e->reorder ? Mem(e->wdesc, ScratchBuf(0, e->wdesc.get_size())) : user;
    memory xm = ActIn(e->in1, s, x.typed_data(), 3), dym = ActIn(e->in2, s, dy.typed_data(), 4);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_DIFF_WEIGHTS, wm},
        {DNNL_ARG_SCRATCHPAD, ScratchMem(2, e->scratch)}};
    if (has_bias) args.emplace(DNNL_ARG_DIFF_BIAS, Mem(g.Bias(true), db->typed_data()));
    e->prim.execute(s, args);
    if (e->reorder)
      e->wreorder.execute(s, {{DNNL_ARG_FROM, wm}, {DNNL_ARG_TO, user},
                              {DNNL_ARG_SCRATCHPAD, ScratchMem(1, e->rscratch)}});
    s.wait();
  });
}

// --- a Winograd layer's forward and backward as one pair -------------------------------------------
//
// For a layer whose three convolutions all run Winograd with matching layouts (WinoPair), the forward
// also returns x in the primitives' blocked layout (xb, flat float32, N*H*W*C values), kept as the
// layer's residual instead of x; the backward takes it, reorders dy into the blocked layout once for
// both of its convolutions, and returns dx, dw [and db]: two fewer reorders per layer than three
// separate calls.

bool CheckWinoPair(const Geom& g) {
  if (!g.WinogradShape()) return false;
  auto f = FwdEntry(g, 0, 0, 1);
  auto d = BwdDataEntry(g, 1);
  auto w = BwdWeightsEntry(g, 0, 1);
  auto wino = [](const Entry& e) { return e.impl.find("wino") != std::string::npos; };
  return wino(*f) && wino(*d) && wino(*w) && f->in1.reorder && f->in1.prim == w->in1.prim &&
         d->in1.prim == w->in2.prim && f->in1.prim.get_size() == (size_t)(g.n * g.h * g.w * g.c) * sizeof(float);
}

// CheckWinoPair, asked once per shape (the custom calls check it at every call).
struct PairOk {
  bool ok;
};
bool WinoPair(const Geom& g) {
  return Lookup(g.Key("pair", 0), [&] { return PairOk{CheckWinoPair(g)}; })->ok;
}

// y = conv(x, w) [+ b] [ReLU], and xb = x in the Winograd primitives' layout
ffi::Error ConvFwdWinoImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                           ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> xb, int64_t sh, int64_t sw,
                           int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t relu, int64_t has_bias) {
  if (x.dimensions().size() != 4 || w.dimensions().size() != 4 || y->dimensions().size() != 4)
    return ffi::Error::InvalidArgument("jaxnet onednn conv_fwd_winograd: x, w and y must be rank 4");
  Geom g = MakeGeom(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr);
  return Guard([&] {
    if (!WinoPair(g)) throw std::runtime_error("conv_fwd_winograd: no Winograd pair for this shape");
    if ((size_t)xb->size_bytes() != g.Src().get_size()) throw std::runtime_error("conv_fwd_winograd: xb size");
    auto e = FwdEntry(g, relu, has_bias, 1);
    if (!(e->in1.prim == FwdEntry(g, 0, 0, 1)->in1.prim)) throw std::runtime_error("conv_fwd_winograd: layout");
    std::lock_guard<std::mutex> exec(exec_mu);
    dnnl::stream& s = Stream();
    memory wm = BlockedWeights(*e, s, Mem(g.UserWeights(), w.typed_data()));
    memory xm = Mem(e->in1.prim, xb->typed_data());
    e->in1.r.execute(s, {{DNNL_ARG_FROM, Mem(g.Src(), x.typed_data())}, {DNNL_ARG_TO, xm},
                         {DNNL_ARG_SCRATCHPAD, ScratchMem(1, e->in1.scratch)}});
    memory ym = ActOutBuf(e->out, y->typed_data(), 4);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, ym}, {DNNL_ARG_SCRATCHPAD, ScratchMem(2, e->scratch)}};
    if (has_bias) args.emplace(DNNL_ARG_BIAS, Mem(g.Bias(true), b.typed_data()));
    e->prim.execute(s, args);
    ActOutFinish(e->out, s, ym, y->typed_data());
    s.wait();
  });
}

// dx, dw [, db] of the layer from xb (conv_fwd_winograd's), dy and w
ffi::Error ConvBwdWinoImpl(ffi::Buffer<ffi::F32> xb, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                           ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dw,
                           ffi::ResultBuffer<ffi::F32> db, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                           int64_t pr, int64_t has_bias) {
  if (dx->dimensions().size() != 4 || w.dimensions().size() != 4 || dy.dimensions().size() != 4)
    return ffi::Error::InvalidArgument("jaxnet onednn conv_bwd_winograd: dx, w and dy must be rank 4");
  Geom g = MakeGeom(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Guard([&] {
    if (!WinoPair(g)) throw std::runtime_error("conv_bwd_winograd: no Winograd pair for this shape");
    if ((size_t)xb.size_bytes() != g.Src().get_size()) throw std::runtime_error("conv_bwd_winograd: xb size");
    auto ed = BwdDataEntry(g, 1);
    auto ew = BwdWeightsEntry(g, has_bias, 1);
    if (!(ew->in1.prim == BwdWeightsEntry(g, 0, 1)->in1.prim && ew->in2.prim == ed->in1.prim))
      throw std::runtime_error("conv_bwd_winograd: layout");
    std::lock_guard<std::mutex> exec(exec_mu);
    dnnl::stream& s = Stream();
    memory dym = ActIn(ed->in1, s, dy.typed_data(), 3);   // once, for both convolutions
    memory wm = BlockedWeights(*ed, s, Mem(g.UserWeights(), w.typed_data()));
    memory dxm = ActOutBuf(ed->out, dx->typed_data(), 4);
    ed->prim.execute(s, {{DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DIFF_SRC, dxm},
                         {DNNL_ARG_SCRATCHPAD, ScratchMem(2, ed->scratch)}});
    ActOutFinish(ed->out, s, dxm, dx->typed_data());
    memory user = Mem(g.UserWeights(), dw->typed_data());
    memory dwm = ew->reorder ? Mem(ew->wdesc, ScratchBuf(5, ew->wdesc.get_size())) : user;
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, Mem(ew->in1.prim, xb.typed_data())}, {DNNL_ARG_DIFF_DST, dym}, {DNNL_ARG_DIFF_WEIGHTS, dwm},
        {DNNL_ARG_SCRATCHPAD, ScratchMem(2, ew->scratch)}};
    if (has_bias) args.emplace(DNNL_ARG_DIFF_BIAS, Mem(g.Bias(true), db->typed_data()));
    ew->prim.execute(s, args);
    if (ew->reorder)
      ew->wreorder.execute(s, {{DNNL_ARG_FROM, dwm}, {DNNL_ARG_TO, user}, {DNNL_ARG_SCRATCHPAD, ScratchMem(1, ew->rscratch)}});
    s.wait();
  });
}

// --- spatial batch norm (train mode) [+ ReLU] --------------------------------------------------

struct BnEntry {
  dnnl::batch_normalization_forward fwd;
  dnnl::batch_normalization_backward bwd;
  memory::desc data, stat, ws;  // x/y (nhwc), mean/var/gamma/beta (C), the ReLU workspace
  size_t fscratch = 0, bscratch = 0;
};

std::shared_ptr<BnEntry> BnLookup(int64_t n, int64_t h, int64_t w, int64_t c, float eps, int64_t relu) {
  std::string key = "bn";
  for (int64_t v : {n, h, w, c, relu}) key += "," + std::to_string(v);
  char e[32];
  std::snprintf(e, sizeof e, ",%a", eps);  // exact: eps values never share a key
  key += e;
  return Lookup(key, [&] {
    using nf = dnnl::normalization_flags;
    nf flags = nf::use_scale | nf::use_shift | (relu ? nf::fuse_norm_relu : nf::none);
    BnEntry e;
    e.data = memory::desc({n, c, h, w}, dt::f32, tag::nhwc);
    dnnl::batch_normalization_forward::primitive_desc fpd(Engine(), dnnl::prop_kind::forward_training, e.data,
                                                          e.data, eps, flags, UserScratch());
    dnnl::batch_normalization_backward::primitive_desc bpd(Engine(), dnnl::prop_kind::backward, e.data, e.data,
                                                           e.data, eps, flags, fpd, UserScratch());
    e.fwd = dnnl::batch_normalization_forward(fpd);
    e.bwd = dnnl::batch_normalization_backward(bpd);
    e.stat = fpd.mean_desc();
    e.ws = fpd.workspace_desc();
    e.fscratch = fpd.scratchpad_desc().get_size();
    e.bscratch = bpd.scratchpad_desc().get_size();
    return e;
  });
}

memory Stat(const BnEntry& e, const void* p) { return Mem(e.stat, p); }

// y = [ReLU](gamma * xhat + beta), mean, var [, workspace]
ffi::Error BnFwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> gamma, ffi::Buffer<ffi::F32> beta,
                     ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var,
                     ffi::ResultBuffer<ffi::U8> ws, float eps, int64_t relu) {
  auto d = x.dimensions();
  if (d.size() != 4) return ffi::Error::InvalidArgument("jaxnet onednn bn_fwd: x must be rank 4");
  return Guard([&] {
    auto e = BnLookup(d[0], d[1], d[2], d[3], eps, relu);
    if (relu && (size_t)ws->size_bytes() != e->ws.get_size()) throw std::runtime_error("bn_fwd: workspace size");
    std::lock_guard<std::mutex> exec(exec_mu);
    dnnl::stream& s = Stream();
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, Mem(e->data, x.typed_data())}, {DNNL_ARG_DST, Mem(e->data, y->typed_data())},
        {DNNL_ARG_SCALE, Stat(*e, gamma.typed_data())}, {DNNL_ARG_SHIFT, Stat(*e, beta.typed_data())},
        {DNNL_ARG_MEAN, Stat(*e, mean->typed_data())}, {DNNL_ARG_VARIANCE, Stat(*e, var->typed_data())},
        {DNNL_ARG_SCRATCHPAD, ScratchMem(2, e->fscratch)}};
    if (relu) args.emplace(DNNL_ARG_WORKSPACE, Mem(e->ws, ws->untyped_data()));
    e->fwd.execute(s, args);
    s.wait();
  });
}

// dx, dgamma, dbeta of the above, from x, its mean and var, gamma, dy [and the workspace]
ffi::Error BnBwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> var,
                     ffi::Buffer<ffi::F32> gamma, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::U8> ws,
                     ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dgamma,
                     ffi::ResultBuffer<ffi::F32> dbeta, float eps, int64_t relu) {
  auto d = x.dimensions();
  if (d.size() != 4) return ffi::Error::InvalidArgument("jaxnet onednn bn_bwd: x must be rank 4");
  return Guard([&] {
    auto e = BnLookup(d[0], d[1], d[2], d[3], eps, relu);
    if (relu && (size_t)ws.size_bytes() != e->ws.get_size()) throw std::runtime_error("bn_bwd: workspace size");
    std::lock_guard<std::mutex> exec(exec_mu);
    dnnl::stream& s = Stream();
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, Mem(e->data, x.typed_data())}, {DNNL_ARG_MEAN, Stat(*e, mean.typed_data())},
        {DNNL_ARG_VARIANCE, Stat(*e, var.typed_data())}, {DNNL_ARG_SCALE, Stat(*e, gamma.typed_data())},
        {DNNL_ARG_DIFF_DST, Mem(e->data, dy.typed_data())}, {DNNL_ARG_DIFF_SRC, Mem(e->data, dx->typed_data())},
        {DNNL_ARG_DIFF_SCALE, Stat(*e, dgamma->typed_data())}, {DNNL_ARG_DIFF_SHIFT, Stat(*e, dbeta->typed_data())},
        {DNNL_ARG_SCRATCHPAD, ScratchMem(2, e->bscratch)}};
    if (relu) args.emplace(DNNL_ARG_WORKSPACE, Mem(e->ws, ws.untyped_data()));
    e->bwd.execute(s, args);
    s.wait();
  });
}

}  // namespace

#define JAXNET_STRIDES_PADS()                                                                       \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb").Attr<int64_t>("pl") \
      .Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetOnednnConvFwd, ConvFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXNET_STRIDES_PADS()
                                  .Attr<int64_t>("relu")
                                  .Attr<int64_t>("has_bias")
                                  .Attr<int64_t>("wino"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetOnednnConvBwdData, ConvBwdDataImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXNET_STRIDES_PADS()
                                  .Attr<int64_t>("wino"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetOnednnConvBwdWeights, ConvBwdWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXNET_STRIDES_PADS()
                                  .Attr<int64_t>("has_bias")
                                  .Attr<int64_t>("wino"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetOnednnConvFwdWino, ConvFwdWinoImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXNET_STRIDES_PADS()
                                  .Attr<int64_t>("relu")
                                  .Attr<int64_t>("has_bias"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetOnednnConvBwdWino, ConvBwdWinoImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() JAXNET_STRIDES_PADS()
                                  .Attr<int64_t>("has_bias"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetOnednnBnFwd, BnFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U8>>()
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnetOnednnBnBwd, BnBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("relu"));

// Bytes of the ReLU workspace that jaxnet_onednn_bn_fwd writes for x of shape (n, h, w, c) (0 without
// ReLU), or -1 when oneDNN cannot make the primitive; jaxnet asks while tracing, to size the buffer.
extern "C" int64_t jaxnet_onednn_bn_workspace_bytes(int64_t n, int64_t h, int64_t w, int64_t c, float eps,
                                                    int64_t relu) {
  try {
    return relu ? (int64_t)BnLookup(n, h, w, c, eps, relu)->ws.get_size() : 0;
  } catch (const std::exception&) {
    return -1;
  }
}

// oneDNN's implementation name for the convolution ``kind`` (0 forward, 1 backward data, 2 backward
// weights) of x (n, h, w, c) and filters (kh, kw, c, o) with output (n, ho, wo, o), as jaxnet would run
// it with ``wino`` (1: Winograd where jaxnet asks for it), e.g. "jit_wino_4x3:avx512_core"; "" when
// oneDNN has no primitive for it.  Written into ``out`` (``size`` bytes, NUL-terminated).
extern "C" void jaxnet_onednn_conv_impl(int64_t kind, const int64_t* geom, int64_t wino, char* out, int64_t size) {
  std::string name;
  try {
    const int64_t* v = geom;  // n h w c kh kw o ho wo sh sw pt pb pl pr
    Geom g{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14]};
    name = kind == 0 ? FwdEntry(g, 0, 0, wino)->impl
                     : kind == 1 ? BwdDataEntry(g, wino)->impl : BwdWeightsEntry(g, 0, wino)->impl;
  } catch (const std::exception&) {
    name.clear();
  }
  if (size > 0) {
    std::snprintf(out, (size_t)size, "%s", name.c_str());
  }
}

// 1 when a layer of these shapes (geom as for jaxnet_onednn_conv_impl) runs as a Winograd pair
// (jaxnet_onednn_conv_fwd_winograd / _bwd_winograd), else 0.
extern "C" int64_t jaxnet_onednn_wino_pair(const int64_t* v) {
  try {
    Geom g{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14]};
    return WinoPair(g) ? 1 : 0;
  } catch (const std::exception&) {
    return 0;
  }
}

// The oneDNN version this library was built against and runs with, for jaxnet's messages.
extern "C" const char* jaxnet_onednn_version() {
  static std::string v = [] {
    const dnnl_version_t* r = dnnl_version();
    return std::to_string(r->major) + "." + std::to_string(r->minor) + "." + std::to_string(r->patch);
  }();
  return v.c_str();
}

// Creates the engine and runs one tiny convolution; returns "" or the error, so that jaxnet can fall
// back to XLA at load time (a SYCL build without a SYCL CPU device fails here) instead of mid-run.
extern "C" const char* jaxnet_onednn_selftest() {
  static std::string err;
  try {
    Geom g{1, 3, 3, 1, 2, 2, 1, 2, 2, 1, 1, 0, 0, 0, 0};
    float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, w[4] = {1, 1, 1, 1}, b[1] = {-20}, y[4] = {0, 0, 0, 0};
    RunFwd(g, x, w, b, y, /*relu=*/1, /*has_bias=*/1, /*wino=*/0);
    if (y[0] != 0 || y[1] != 0 || y[2] != 4 || y[3] != 8) err = "self-test convolution gave wrong numbers";
    else err.clear();
  } catch (const std::exception& e) {
    err = e.what();
  }
  return err.c_str();
}
