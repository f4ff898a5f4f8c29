# A worker for every CPython this build can serve as python_executable, and spr-pythons.json, the list the
# supervisor resolves a python_executable against without running it (issues 17 and 20).
#
# Each entry is one build of CPython (its sys.version, prefix, standard library, site directories and the
# worker that embeds exactly its libpython). SPR_PYTHONS is "auto" (every CPython 3.9 to 3.13 with a
# shared libpython found in /usr/bin, /usr/local/bin and pyenv's versions), a list of python3 paths, or "".
set(SPR_PYTHONS "auto" CACHE STRING "Other CPythons to build a worker for: auto, a list of paths, or empty")
set(SPR_PYTHON_INFO ${CMAKE_CURRENT_SOURCE_DIR}/cmake/python_info.py)
set(SPR_PYTHONS_JSON ${CMAKE_BINARY_DIR}/spr-pythons.json)

# The description of one python3 (cmake/python_info.py), or "" when it cannot be run.
function(spr_python_info exe out)
  execute_process(COMMAND ${exe} -I -S ${SPR_PYTHON_INFO} OUTPUT_VARIABLE info RESULT_VARIABLE rc ERROR_QUIET
                  TIMEOUT 60)
  if(NOT rc EQUAL 0)
    set(info "")
  endif()
  set(${out} "${info}" PARENT_SCOPE)
endfunction()

spr_python_info(${Python3_EXECUTABLE} main_info)
if(main_info STREQUAL "")
  message(FATAL_ERROR "cannot describe ${Python3_EXECUTABLE} with cmake/python_info.py")
endif()
string(JSON main_info SET "${main_info}" worker "\"spr-worker\"")
string(JSON main_prefix GET "${main_info}" prefix)
string(JSON main_exe GET "${main_info}" executable)
set(manifest "${main_info}")
set(served_prefixes "${main_prefix}")
set(SPR_EXTRA_WORKERS "")
# CPython builds with own-GIL sub-interpreters (3.12+), as "version|include|libpython|libdir|prefix" (bench/owngil/).
set(SPR_OWN_GIL_PYTHONS "")
if(Python3_VERSION VERSION_GREATER_EQUAL 3.12)
  string(JSON main_ver GET "${main_info}" version)
  string(JSON main_include GET "${main_info}" include)
  string(JSON main_lib GET "${main_info}" libpython)
  string(JSON main_libdir GET "${main_info}" libdir)
  list(APPEND SPR_OWN_GIL_PYTHONS "${main_ver}|${main_include}|${main_lib}|${main_libdir}|${main_prefix}")
endif()

set(candidates ${SPR_PYTHONS})
if(SPR_PYTHONS STREQUAL "auto")
  set(pyenv_root "$ENV{PYENV_ROOT}")
  if(pyenv_root STREQUAL "" AND DEFINED ENV{HOME})
    set(pyenv_root "$ENV{HOME}/.pyenv")
  endif()
  file(GLOB candidates /usr/bin/python3.* /usr/local/bin/python3.* ${pyenv_root}/versions/*/bin/python3)
  list(FILTER candidates INCLUDE REGEX "(python3\\.[0-9]+|/python3)$")
endif()

foreach(candidate IN LISTS candidates)
  spr_python_info(${candidate} info)
  if(info STREQUAL "")
    if(NOT SPR_PYTHONS STREQUAL "auto")
      message(FATAL_ERROR "SPR_PYTHONS: cannot run ${candidate}")
    endif()
    continue()
  endif()
  string(JSON ver GET "${info}" version)
  string(JSON xy GET "${info}" xy)
  string(JSON prefix GET "${info}" prefix)
  string(JSON skip GET "${info}" skip)
  if(prefix IN_LIST served_prefixes)
    continue()  # the same installation under another name
  endif()
  if(xy VERSION_LESS 3.9 OR xy VERSION_GREATER 3.13)
    set(skip "Python ${xy} is outside 3.9 to 3.13")
  endif()
  if(NOT skip STREQUAL "")
    message(STATUS "No worker for ${candidate} (Python ${ver}): ${skip}")
    if(NOT SPR_PYTHONS STREQUAL "auto")
      message(FATAL_ERROR "SPR_PYTHONS: ${candidate}: ${skip}")
    endif()
    continue()
  endif()
  list(APPEND served_prefixes "${prefix}")
  string(JSON include GET "${info}" include)
  string(JSON libpython GET "${info}" libpython)
  string(JSON libdir GET "${info}" libdir)
  # One engine per X.Y (the first build of it found gives the headers); one worker per build.
  if(xy STREQUAL "${Python3_VERSION_MAJOR}.${Python3_VERSION_MINOR}")
    set(engine spr_worker_core)
  else()
    set(engine spr_worker_core_python${xy})
    if(NOT TARGET ${engine})
      spr_add_engine(_python${xy} "${include}" "${candidate}")
    endif()
  endif()
  set(worker spr-worker-python${ver})
  if(TARGET ${worker})
    string(MD5 h "${prefix}")
    string(SUBSTRING "${h}" 0 8 h)
    set(worker spr-worker-python${ver}-${h})
  endif()
  add_executable(${worker} embed/worker/worker_main.cpp)
  target_link_libraries(${worker} PRIVATE ${engine} ${libpython} spr_warnings)
  target_compile_definitions(${worker} PRIVATE SPR_WORKER_PYTHON_HOME="${prefix}")
  # The loader takes libpython from that Python's own directory, never another build of the same X.Y.
  set_target_properties(${worker} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}
    BUILD_RPATH ${libdir} INSTALL_RPATH ${libdir})
  install(TARGETS ${worker} RUNTIME DESTINATION ${CMAKE_INSTALL_LIBEXECDIR}/safe-py-runner)
  list(APPEND SPR_EXTRA_WORKERS ${worker})
  if(xy VERSION_GREATER_EQUAL 3.12)
    list(APPEND SPR_OWN_GIL_PYTHONS "${ver}|${include}|${libpython}|${libdir}|${prefix}")
  endif()
  string(JSON info SET "${info}" worker "\"${worker}\"")
  string(APPEND manifest ",\n${info}")
  message(STATUS "Worker ${worker} embeds ${libpython} (${candidate})")
endforeach()

file(WRITE ${SPR_PYTHONS_JSON}.tmp "[\n${manifest}\n]\n")
file(COPY_FILE ${SPR_PYTHONS_JSON}.tmp ${SPR_PYTHONS_JSON} ONLY_IF_DIFFERENT)
add_custom_target(spr_workers ALL DEPENDS spr-worker ${SPR_EXTRA_WORKERS})

# The supervisor carries the list in its own code: it never reads a description a run could have written.
set(SPR_PYTHONS_CPP ${CMAKE_BINARY_DIR}/generated/pythons.cpp)
add_custom_command(OUTPUT ${SPR_PYTHONS_CPP}
  COMMAND ${CMAKE_COMMAND} -DOUT=${SPR_PYTHONS_CPP} "-DINPUTS=kSprPythons=${SPR_PYTHONS_JSON}"
          -P ${CMAKE_CURRENT_SOURCE_DIR}/cmake/embed_text.cmake
  DEPENDS ${SPR_PYTHONS_JSON} cmake/embed_text.cmake
  COMMENT "Embedding spr-pythons.json into the supervisor")
target_sources(safe_py_runner PRIVATE ${SPR_PYTHONS_CPP})
