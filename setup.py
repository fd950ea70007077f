"""Build hook: the mirror's C record encoder, where a C compiler is available.

``haproxy_ai/mirror/_fastrecord.c`` encodes the common mirror record (README "Mirroring's cost").
It is optional: without a compiler the build warns and the install is pure Python, with the same
records (``record.NATIVE`` says which; ``tests/test_mirror_native.py`` holds both to the same bytes).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "haproxy_ai.mirror._fastrecord",
            ["haproxy_ai/mirror/_fastrecord.c"],
            # No fused multiply-add: durations must round exactly as the Python path rounds them.
            extra_compile_args=["-O2", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
