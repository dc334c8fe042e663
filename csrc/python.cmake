# Python pieces of the build (included by CMakeLists.txt when HYBRID_ALLOC_BUILD_PYTHON is ON, which
# pyproject.toml sets for scikit-build-core):
#   * hybrid_alloc._core, the pybind11 control module, linked to the `hybrid_alloc` shared library target
#     (libhybrid_alloc.so) so the module, ctypes and PyTorch share one allocator state per process;
#   * _core installed into the hybrid_alloc package directory next to libhybrid_alloc.so, RPATH $ORIGIN;
#   * csrc/torch_bridge.cpp installed next to them: the PyTorch hook bridge compiled at run time (on
#     machines with CUDA) by hybrid_alloc.allocator.
# Expects the `hybrid_alloc` library target to exist already.
if(NOT TARGET hybrid_alloc)
  message(FATAL_ERROR "csrc/python.cmake: include it after the hybrid_alloc library target is defined")
endif()

find_package(Python 3.9 REQUIRED COMPONENTS Interpreter Development.Module)
find_package(pybind11 CONFIG QUIET)
if(NOT pybind11_FOUND)
  # Development builds outside scikit-build-core: ask the interpreter's pybind11 where its CMake files are.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -m pybind11 --cmakedir
    OUTPUT_VARIABLE _ha_pybind11_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET
    RESULT_VARIABLE _ha_pybind11_rc)
  if(_ha_pybind11_rc EQUAL 0)
    find_package(pybind11 CONFIG REQUIRED PATHS "${_ha_pybind11_dir}" NO_DEFAULT_PATH)
  endif()
endif()

if(pybind11_FOUND)
  pybind11_add_module(_core MODULE "${CMAKE_CURRENT_LIST_DIR}/python_module.cpp")
else()
  # No pybind11 package (e.g. an offline GPU machine with only PyTorch): use the pybind11 headers that
  # PyTorch ships in torch/include.
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))"
    OUTPUT_VARIABLE _ha_torch_inc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(NOT _ha_torch_inc OR NOT EXISTS "${_ha_torch_inc}/pybind11/pybind11.h")
    message(FATAL_ERROR "pybind11 not found: pip install pybind11 (into ${Python_EXECUTABLE}'s environment)")
  endif()
  message(STATUS "hybrid_alloc: pybind11 headers from PyTorch (${_ha_torch_inc})")
  Python_add_library(_core MODULE WITH_SOABI "${CMAKE_CURRENT_LIST_DIR}/python_module.cpp")
  target_include_directories(_core SYSTEM PRIVATE "${_ha_torch_inc}")
endif()
target_include_directories(_core PRIVATE "${CMAKE_CURRENT_LIST_DIR}/include")
target_link_libraries(_core PRIVATE hybrid_alloc)
target_compile_features(_core PRIVATE cxx_std_17)
target_link_libraries(_core PRIVATE ${CMAKE_DL_LIBS})  # dladdr for library_path()
set_target_properties(_core PROPERTIES
  INSTALL_RPATH "$ORIGIN"
  BUILD_WITH_INSTALL_RPATH OFF
  CXX_VISIBILITY_PRESET hidden
  VISIBILITY_INLINES_HIDDEN ON)

# libhybrid_alloc.so itself is installed into hybrid_alloc/ by CMakeLists.txt.
install(TARGETS _core LIBRARY DESTINATION hybrid_alloc)
if(SKBUILD)
  # Wheels only: a development `cmake --install <build> --prefix <repo>` finds it in csrc/ already.
  install(FILES "${CMAKE_CURRENT_LIST_DIR}/torch_bridge.cpp" DESTINATION hybrid_alloc)
endif()
