# Strict warnings from the first commit; -Werror everywhere.
set(FLEECE_WARNINGS -Wall -Wextra -Werror -Wshadow -Wnon-virtual-dtor -Wimplicit-fallthrough)
if(CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  # Asio-free project, but clang + libstdc++ coroutines need nothing extra.
  list(APPEND FLEECE_WARNINGS -Wno-unused-private-field)
endif()
