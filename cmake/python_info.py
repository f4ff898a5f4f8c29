# Describes the CPython that runs this script, for cmake/pythons.cmake (run with -I -S at configure time).
# One JSON object on stdout; "skip" says why this Python cannot get a worker.
import json
import os
import site
import sys
import sysconfig


def main():
    v = sysconfig.get_config_var
    info = {
        "version": "%d.%d.%d" % sys.version_info[:3],
        "xy": "%d.%d" % sys.version_info[:2],
        "build": sys.version,
        "executable": os.path.realpath(sys.executable),
        "prefix": sys.base_prefix,
        "include": sysconfig.get_paths()["include"],
        # sys.path without site: the standard library (zip, lib/pythonX.Y, lib-dynload).
        "stdlib": [p for p in sys.path if p],
        "site": site.getsitepackages(),
        # A venv's site directories, relative to the venv (Debian adds dist-packages beside site-packages).
        "venv_site": [],
        "bindirs": [],
        "libdir": v("LIBDIR") or "",
        "libpython": v("INSTSONAME") or "",
    }
    rel = ["lib/python%s/site-packages" % info["xy"]]
    for p in site.getsitepackages(["/@venv"]):
        r = os.path.relpath(p, "/@venv")
        if r not in rel:
            rel.append(r)
    info["venv_site"] = rel
    # Where a venv's pyvenv.cfg "home" may point for this Python (the name it was run by, and the file).
    dirs = [os.path.realpath(os.path.dirname(sys.executable)), os.path.dirname(info["executable"])]
    info["bindirs"] = sorted(set(dirs))
    skip = ""
    if not info["libpython"].startswith("libpython") or ".so" not in info["libpython"]:
        skip = "no shared libpython (build it with --enable-shared)"
    else:
        lib = os.path.join(info["libdir"], info["libpython"])
        info["libpython"] = lib
        try:
            import ctypes  # only here: reading the library's own version string

            f = ctypes.CDLL(lib).Py_GetVersion
            f.restype = ctypes.c_char_p
            if f().decode() != sys.version:
                skip = "%s is another build (%s)" % (lib, f().decode())
        except (OSError, AttributeError, ImportError) as e:
            skip = "cannot read %s: %s" % (lib, e)
    info["skip"] = skip
    print(json.dumps(info), end="")


main()
