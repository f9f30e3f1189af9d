if(FLEECE_SANITIZE)
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
