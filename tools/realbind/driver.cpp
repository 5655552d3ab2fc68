// Calls a Python calibrator's C++ virtuals exactly as TensorRT's builder does.
//
// A pybind11 instance of a Python subclass of trt.IInt8EntropyCalibrator2 (or another base)
// IS the C++ trampoline object the builder receives from `config.int8_calibrator`. Python
// passes its address (the word after PyObject_HEAD) and the base it derives from; the driver
// casts it to that base and calls the IInt8Calibrator virtuals through the base-class pointer.
// Compiled once per TensorRT major version against that version's public headers (vendored
// in include/, Apache-2.0); loaded with ctypes.CDLL, so the GIL is released during each call,
// as inside build_serialized_network. Not TensorRT code.
#include "NvInfer.h"

#include <cstddef>
#include <cstdint>

using namespace nvinfer1;

namespace
{
// Base kinds, in the order of tools/realbind/harness.py's BASES.
IInt8Calibrator* as_calibrator(void* self, int32_t kind)
{
    switch (kind)
    {
    case 1: return static_cast<IInt8EntropyCalibrator2*>(self);
    case 2: return static_cast<IInt8EntropyCalibrator*>(self);
    case 3: return static_cast<IInt8MinMaxCalibrator*>(self);
    default: return static_cast<IInt8Calibrator*>(self);
    }
}
} // namespace

extern "C"
{
int32_t rb_trt_major() { return NV_TENSORRT_MAJOR; }

int32_t rb_get_batch_size(void* self, int32_t kind) { return as_calibrator(self, kind)->getBatchSize(); }

// true: bindings[0..n) hold the batch's device pointers; false: end of data.
int32_t rb_get_batch(void* self, int32_t kind, void** bindings, char const** names, int32_t n)
{
    return as_calibrator(self, kind)->getBatch(bindings, names, n) ? 1 : 0;
}

// The cache TensorRT would read (nullptr: "no cache, calibrate"); its length in *length.
void const* rb_read_calibration_cache(void* self, int32_t kind, size_t* length)
{
    std::size_t n = 0;
    void const* data = as_calibrator(self, kind)->readCalibrationCache(n);
    *length = n;
    return data;
}

void rb_write_calibration_cache(void* self, int32_t kind, void const* data, size_t length)
{
    as_calibrator(self, kind)->writeCalibrationCache(data, length);
}

int32_t rb_get_algorithm(void* self, int32_t kind)
{
    return static_cast<int32_t>(as_calibrator(self, kind)->getAlgorithm());
}
}
