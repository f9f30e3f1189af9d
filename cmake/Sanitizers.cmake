if(FLEECE_SANITIZE)
  # -O1 halves the compile time of -O2 under instrumentation and still keeps coroutine
  # await chains shallow enough for ASan's stack (-O0 overflowed it).
  set(CMAKE_CXX_FLAGS_RELWITHDEBINFO "-O1 -g1 -DNDEBUG")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()
if(FLEECE_FUZZ)
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()
if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang" AND (FLEECE_SANITIZE OR FLEECE_FUZZ))
  # clang 14's -fsanitize=function cannot compile coroutines ("Cannot represent a
  # difference across sections").
  add_compile_options(-fno-sanitize=function)
endif()
