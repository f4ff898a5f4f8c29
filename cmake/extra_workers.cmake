# Extra workers for other installed CPythons (issue 10): -DSPR_EXTRA_PYTHONS="/path/python3.12;/path/python3.13"
# builds spr-worker-python3.12, ... next to spr-worker. A run whose python_executable is of that version
# uses it; without one, the run fails with an error naming both versions.
set(SPR_EXTRA_PYTHONS "" CACHE STRING "Other python3 executables to build an extra worker for")

foreach(extra_python IN LISTS SPR_EXTRA_PYTHONS)
  execute_process(
    COMMAND ${extra_python} -c
      "import sys, sysconfig; v = sysconfig.get_config_var; print(';'.join(['%d.%d' % sys.version_info[:2], sysconfig.get_paths()['include'], v('LIBDIR') or '', v('LDLIBRARY') or '', sys.base_prefix]), end='')"
    OUTPUT_VARIABLE info RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "SPR_EXTRA_PYTHONS: cannot run ${extra_python}")
  endif()
  list(GET info 0 ver)
  list(GET info 1 inc)
  list(GET info 2 libdir)
  list(GET info 3 ldlib)
  list(GET info 4 home)
  if(NOT ldlib MATCHES "\\.so")
    message(FATAL_ERROR "SPR_EXTRA_PYTHONS: ${extra_python} has no shared libpython (${ldlib}); build it with --enable-shared")
  endif()
  if(ver STREQUAL "${Python3_VERSION_MAJOR}.${Python3_VERSION_MINOR}")
    message(FATAL_ERROR "SPR_EXTRA_PYTHONS: ${extra_python} is Python ${ver}, the version spr-worker already embeds")
  endif()
  set(engine spr_engine_python${ver})
  add_library(${engine} STATIC ${SPR_ENGINE_SOURCES})
  target_include_directories(${engine} SYSTEM PUBLIC ${inc})
  target_include_directories(${engine} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include
    ${CMAKE_CURRENT_SOURCE_DIR}/embed ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(${engine} PUBLIC ${libdir}/${ldlib} ${CMAKE_DL_LIBS} nlohmann_json::nlohmann_json spr_harden
    PRIVATE spr_warnings)
  target_compile_definitions(${engine} PRIVATE SPR_PYTHON_HOME="${home}")
  add_executable(spr-worker-python${ver} embed/worker_main.cpp)
  target_link_libraries(spr-worker-python${ver} PRIVATE ${engine} spr_warnings)
  # The worker finds its libpython where that Python lives, not on the loader's default path.
  set_target_properties(spr-worker-python${ver} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}
    BUILD_RPATH ${libdir} INSTALL_RPATH ${libdir})
  install(TARGETS spr-worker-python${ver} RUNTIME DESTINATION ${CMAKE_INSTALL_LIBEXECDIR}/safe-py-runner)
  message(STATUS "Extra worker: spr-worker-python${ver} embeds ${extra_python}")
endforeach()
