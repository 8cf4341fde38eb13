# Writes OUT: the sha256 of the C++ sources the extension was built from ("NAME SHA256\n" per file,
# sorted by name, then hashed). pytrain/_source_tree.py computes the same digest over csrc/ so that a
# source checkout only ever loads an extension built from its own sources.
list(SORT SOURCES)
set(listing "")
foreach(source IN LISTS SOURCES)
  file(SHA256 "${source}" digest)
  get_filename_component(name "${source}" NAME)
  string(APPEND listing "${name} ${digest}\n")
endforeach()
string(SHA256 total "${listing}")
file(WRITE "${OUT}" "${total}\n")
