/* Stand-ins for the TensorRT libraries that TensorRT's Python module (tensorrt.so) links to.
 *
 * tensorrt.so only needs these symbols to load (`nm -D --undefined-only tensorrt.so`). Every
 * one returns null / nothing: a real builder, runtime or parser cannot be made with them, which
 * is fine, since the calibrator interfaces are header-only (pybind11 trampolines in tensorrt.so).
 * Compiled once per library name (libnvinfer.so.N, libnvonnxparser.so.N, ...), all symbols in
 * each, by tools/realbind/harness.py. Not TensorRT code.
 */
#include <stddef.h>

void* createInferBuilder_INTERNAL(void* logger, int version) { (void)logger; (void)version; return NULL; }
void* createInferRuntime_INTERNAL(void* logger, int version) { (void)logger; (void)version; return NULL; }
void* createInferRefitter_INTERNAL(void* engine, void* logger, int version)
{
    (void)engine; (void)logger; (void)version; return NULL;
}
void* getPluginRegistry(void) { return NULL; }
void* getBuilderPluginRegistry(int capability) { (void)capability; return NULL; }

void* createNvOnnxParser_INTERNAL(void* network, void* logger, int version)
{
    (void)network; (void)logger; (void)version; return NULL;
}
void* createNvOnnxParserRefitter_INTERNAL(void* refitter, void* logger, int version)
{
    (void)refitter; (void)logger; (void)version; return NULL;
}
int getNvOnnxParserVersion(void) { return 0; }

int initLibNvInferPlugins(void* logger, const char* ns) { (void)logger; (void)ns; return 0; }

/* TensorRT 8.x libnvparsers (UFF / Caffe): C functions carrying the C++ mangled names. */
void* _ZN11nvuffparser15createUffParserEv(void) { return NULL; }
void _ZN11nvuffparser8FieldMapC1EPKcPKvNS_9FieldTypeEi(void* self, const char* name,
                                                       const void* data, int type, int length)
{
    (void)self; (void)name; (void)data; (void)type; (void)length;
}
void* _ZN14nvcaffeparser117createCaffeParserEv(void) { return NULL; }
void _ZN14nvcaffeparser123shutdownProtobufLibraryEv(void) {}
