// Session 22's experiment (docs/benchmarks.md, "Issue 17, session 22"): a hand-written attention for the ragged
// decoder step, as an onnxruntime custom op (nmtserve.RaggedSelfAttention, a drop-in for the CPU
// GroupQueryAttention of export/ragged.py), plus plain C entry points of the same self-attention and of the
// cross-attention for a kernel-only comparison. Not part of the package: it measured 1.01x (fp32) and 1.05x (int8)
// end to end, too little for a compiled library in the serving image. Built by attention_experiment.py against the
// onnxruntime C/C++ API headers of Debian's libonnxruntime-dev.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT
#include <cmath>
#include <cstring>
#include <vector>

namespace {

struct Shape { int64_t rows, heads, capacity, d_head; };

// One query row against L cached key/value rows: scores, softmax, weighted sum. Sixteen partial sums let the
// compiler vectorise the dot product without reassociating floats itself (-ffast-math is not used).
__attribute__((target_clones("avx512f", "avx2,fma", "default")))
void attend_one(const float* q, const float* K, const float* V, int L, int D, float scale, float* scores, float* out) {
  float mx = -INFINITY;
  for (int t = 0; t < L; ++t) {
    const float* k = K + (size_t)t * D;
    float acc[16] = {0};
    for (int d = 0; d < D; d += 16)
      for (int j = 0; j < 16; ++j) acc[j] += q[d + j] * k[d + j];
    float s = 0;
    for (int j = 0; j < 16; ++j) s += acc[j];
    s *= scale;
    scores[t] = s;
    mx = s > mx ? s : mx;
  }
  float sum = 0;
  for (int t = 0; t < L; ++t) { scores[t] = std::exp(scores[t] - mx); sum += scores[t]; }
  const float inv = 1.0f / sum;
  float acc[256];
  for (int d = 0; d < D; ++d) acc[d] = 0;
  for (int t = 0; t < L; ++t) {
    const float p = scores[t] * inv;
    const float* v = V + (size_t)t * D;
    for (int d = 0; d < D; ++d) acc[d] += p * v[d];
  }
  std::memcpy(out, acc, D * sizeof(float));
}

struct Kernel {
  int64_t heads;
  explicit Kernel(const OrtApi&, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    heads = ki.GetAttribute<int64_t>("num_heads");
  }
  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    auto qkv = ctx.GetInput(0);
    auto past_k = ctx.GetInput(3);
    auto past_v = ctx.GetInput(4);
    auto seqlens = ctx.GetInput(5);
    auto dims = past_k.GetTensorTypeAndShapeInfo().GetShape();
    const int64_t R = dims[0], H = dims[1], C = dims[2], D = dims[3];
    auto out = ctx.GetOutput(0, {R, 1, H * D});
    auto pk = ctx.GetOutput(1, dims);
    auto pv = ctx.GetOutput(2, dims);
    const float* in_k = past_k.GetTensorData<float>();
    const float* in_v = past_v.GetTensorData<float>();
    float* K0 = pk.GetTensorMutableData<float>();
    float* V0 = pv.GetTensorMutableData<float>();
    const size_t cache_floats = (size_t)R * H * C * D;
    if (K0 != in_k) std::memcpy(K0, in_k, cache_floats * sizeof(float));
    if (V0 != in_v) std::memcpy(V0, in_v, cache_floats * sizeof(float));
    const float* x = qkv.GetTensorData<float>();
    const int32_t* pos = seqlens.GetTensorData<int32_t>();
    float* o = out.GetTensorMutableData<float>();
    const float scale = 1.0f / std::sqrt((float)D);
    std::vector<float> scores(C);
    for (int64_t r = 0; r < R; ++r) {
      const int L = pos[r] + 1;
      const float* row = x + (size_t)r * 3 * H * D;
      for (int64_t h = 0; h < H; ++h) {
        float* K = K0 + ((size_t)r * H + h) * C * D;
        float* V = V0 + ((size_t)r * H + h) * C * D;
        std::memcpy(K + (size_t)(L - 1) * D, row + H * D + h * D, D * sizeof(float));
        std::memcpy(V + (size_t)(L - 1) * D, row + 2 * H * D + h * D, D * sizeof(float));
        attend_one(row + h * D, K, V, L, (int)D, scale, scores.data(), o + (size_t)r * H * D + h * D);
      }
    }
  }
};

struct Op : Ort::CustomOpBase<Op, Kernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new Kernel(api, info); }
  const char* GetName() const { return "RaggedSelfAttention"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 7; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i >= 5 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return (i == 1 || i == 2) ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

// Kernel-only entry points (ctypes): qkv [R, 3*H*D]; caches [R, H, C, D]; positions [R]; out [R, H*D].
extern "C" __attribute__((visibility("default"))) void ragged_self_attention(
    const float* qkv, float* keys, float* values, const int64_t* positions, float* out, int R, int H, int C, int D) {
  std::vector<float> scores(C);
  const float scale = 1.0f / std::sqrt((float)D);
  for (int r = 0; r < R; ++r) {
    const int L = (int)positions[r] + 1;
    const float* row = qkv + (size_t)r * 3 * H * D;
    for (int h = 0; h < H; ++h) {
      float* K = keys + ((size_t)r * H + h) * C * D;
      float* V = values + ((size_t)r * H + h) * C * D;
      std::memcpy(K + (size_t)(L - 1) * D, row + H * D + h * D, D * sizeof(float));
      std::memcpy(V + (size_t)(L - 1) * D, row + 2 * H * D + h * D, D * sizeof(float));
      attend_one(row + h * D, K, V, L, D, scale, scores.data(), out + (size_t)r * H * D + h * D);
    }
  }
}

// q [N, Sq, H*D] (a sentence's beam rows as Sq queries); keys, values [N, H, S, D]; mask [N, S] (right-padded).
extern "C" __attribute__((visibility("default"))) void cross_attention(
    const float* q, const float* keys, const float* values, const int32_t* mask, float* out, int N, int Sq, int H,
    int S, int D) {
  std::vector<float> scores(S);
  const float scale = 1.0f / std::sqrt((float)D);
  for (int n = 0; n < N; ++n) {
    int L = 0;
    for (int s = 0; s < S; ++s) L += mask[(size_t)n * S + s] != 0;
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < Sq; ++i) {
        const size_t at = ((size_t)n * Sq + i) * H * D + h * D;
        attend_one(q + at, keys + ((size_t)n * H + h) * S * D, values + ((size_t)n * H + h) * S * D, L, D, scale,
                   scores.data(), out + at);
      }
  }
}

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api) {
  Ort::InitApi(api->GetApi(ORT_API_VERSION));
  static Op op;
  try {
    Ort::CustomOpDomain domain{"nmtserve"};
    domain.Add(&op);
    Ort::UnownedSessionOptions(options).Add(domain);
    static std::vector<Ort::CustomOpDomain> keep;
    keep.push_back(std::move(domain));
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
