// Python module stub for aal_k8s._C_cuda: importing it loads this library, whose static
// initialisers register the CUDA kernels of the aal_k8s operators (TORCH_LIBRARY_IMPL in
// fused_heads.cu). Kept out of the .cu so nvcc never sees Python.h.
#include <Python.h>

extern "C" {
PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C_cuda", "aal_k8s fused head operators (CUDA kernels)", -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
