"""
Fuzzing of botd2: the frame decoder, the responder and initiator state
machines, the transport receive path and the Twisted layer.

  - L{fuzz.model}: a reference model of WIRE.md written apart from botd2 (its
    own proto3 wire parser, point validation, ECDSA/ECDH arithmetic, key
    schedule); the oracles compare botd2 with it, read by read.
  - L{fuzz.pool}: fixed keys, ids and precomputed handshakes, so valid input
    is cheap to make.
  - L{fuzz.mutators}: choosers (C{random.Random}, Hypothesis, atheris) and
    the byte, frame and protobuf mutators.
  - L{fuzz.strategies}: the input generators of each target, and Hypothesis
    strategies made from them.
  - L{fuzz.oracles}: run one input against one target and check it.
  - L{fuzz.run}: the plain loop for long runs; L{fuzz.atheris_target}: the
    coverage-guided harness.  See C{fuzz/README.rst}.
"""
