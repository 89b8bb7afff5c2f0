# Included by CMakeLists.txt when a CUDA compiler is found: builds thaw._cuda.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "52")
  set(CMAKE_CUDA_ARCHITECTURES 80 90)
endif()
find_package(CUDAToolkit REQUIRED)
add_library(thaw_cuda_kernels STATIC cuda/page_copy.cu cuda/crc32c.cu)
set_target_properties(thaw_cuda_kernels PROPERTIES POSITION_INDEPENDENT_CODE ON
                      CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}")
target_link_libraries(thaw_cuda_kernels PUBLIC CUDA::cudart_static)
nanobind_add_module(_cuda NB_STATIC cuda/cuda_module.cpp)
target_include_directories(_cuda PRIVATE cuda)
target_link_libraries(_cuda PRIVATE thaw_cuda_kernels)
install(TARGETS _cuda LIBRARY DESTINATION thaw)
