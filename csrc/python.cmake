# Python pieces of the build (included by CMakeLists.txt when HYBRID_ALLOC_BUILD_PYTHON is ON, which
# pyproject.toml sets for scikit-build-core):
#   * hybrid_alloc._core, the pybind11 control module, linked to the `hybrid_alloc` shared library target
#     (libhybrid_alloc.so) so the module, ctypes and PyTorch share one allocator state per process;
#   * both installed into the hybrid_alloc package directory, _core with RPATH $ORIGIN;
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
    OUTPUT_VARIABLE _hybrid_alloc_pybind11_dir
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _hybrid_alloc_pybind11_rc)
  if(NOT _hybrid_alloc_pybind11_rc EQUAL 0)
    message(FATAL_ERROR "pybind11 not found: pip install pybind11 (into ${Python_EXECUTABLE}'s environment)")
  endif()
  find_package(pybind11 CONFIG REQUIRED PATHS "${_hybrid_alloc_pybind11_dir}" NO_DEFAULT_PATH)
endif()

pybind11_add_module(_core MODULE "${CMAKE_CURRENT_LIST_DIR}/python_module.cpp")
target_include_directories(_core PRIVATE "${CMAKE_CURRENT_LIST_DIR}/include")
target_link_libraries(_core PRIVATE hybrid_alloc)
target_compile_features(_core PRIVATE cxx_std_17)
target_link_libraries(_core PRIVATE ${CMAKE_DL_LIBS})  # dladdr for library_path()
set_target_properties(_core PROPERTIES
  INSTALL_RPATH "$ORIGIN"
  BUILD_WITH_INSTALL_RPATH OFF
  CXX_VISIBILITY_PRESET hidden
  VISIBILITY_INLINES_HIDDEN ON)
# The library finds nothing through RPATH itself, but give it $ORIGIN too (harmless, keeps the pair movable).
set_target_properties(hybrid_alloc PROPERTIES INSTALL_RPATH "$ORIGIN")

install(TARGETS _core LIBRARY DESTINATION hybrid_alloc)
install(TARGETS hybrid_alloc LIBRARY DESTINATION hybrid_alloc)
install(FILES "${CMAKE_CURRENT_LIST_DIR}/torch_bridge.cpp" DESTINATION hybrid_alloc)
