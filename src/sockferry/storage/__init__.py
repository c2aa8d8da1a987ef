"""The local file store the servers and clients read and write through.

One module per job; import each name from the module that defines it:

- ``names`` — pure: client paths split and checked, link targets judged, modes capped,
  the reserved names of temporaries and of resume's partial files.
- ``root`` — ``Root``, the sandbox: every path resolved beneath one directory, one fd
  per step, and the operations on it (stat, open, create, mkdir, remove, links, list).
- ``listing`` — the walk below an open directory fd that ``Root.list`` yields.
- ``dircache`` — ``DirHandle`` (a directory fd shared by the files written in it) and
  ``DirCache`` (recently resolved directories of one connection).
- ``atomic`` — ``AtomicFile`` (written under a temporary name, renamed into place whole)
  and ``PartialFile`` (kept for resume when abandoned).
- ``durability`` — ``Durability`` and ``GroupCommit``: when written files are flushed.
- ``filesystems`` — libc facts about a whole file system (in memory only?) and syncfs.
- ``partials`` — temporaries and partial files left behind: sweeping, clearing.
- ``sparse`` — the data runs and holes of a sparse file being read.
- ``store`` — ``Store``, what the servers need from a store (``Root`` provides it).
"""
