# Resolves SQZ_CUDA (OFF, ON, AUTO) into SQZ_CUDA_ENABLED and enables the CUDA language when it is on.
# ON without a CUDA compiler is an error; AUTO quietly stays off.
string(TOUPPER "${SQZ_CUDA}" _sqz_cuda)
if(NOT _sqz_cuda MATCHES "^(ON|OFF|AUTO)$")
  message(FATAL_ERROR "SQZ_CUDA must be ON, OFF or AUTO, not '${SQZ_CUDA}'")
endif()
set(SQZ_CUDA_ENABLED OFF)
if(NOT _sqz_cuda STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(SQZ_CUDA_ENABLED ON)
  elseif(_sqz_cuda STREQUAL "ON")
    message(FATAL_ERROR "SQZ_CUDA=ON but no CUDA compiler was found (set CMAKE_CUDA_COMPILER or put nvcc on PATH)")
  endif()
endif()
# The cuda back end is header-only too (sqz/cuda_backend.cuh); what CMake builds here is its GPU test.
# Architectures: Ampere and Hopper by default (both supported by CUDA 12 and 13); override with
# -DCMAKE_CUDA_ARCHITECTURES=...
if(SQZ_CUDA_ENABLED)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  enable_language(CUDA)
endif()
message(STATUS "sqz: CUDA back end ${SQZ_CUDA_ENABLED} (SQZ_CUDA=${SQZ_CUDA})")
