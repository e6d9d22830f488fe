"""metrics.json's environment names the CPU and the instruction set its math libraries may use:
BN runs reproduce bit for bit only on CPUs of one kind (docs/guide.md, "Engines and reproducibility")."""

from __future__ import annotations

from bncompare.backend import cpu

INTEL_AVX2 = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 79
model name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz
stepping\t: 1
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma avx2 bmi2

processor\t: 1
vendor_id\t: GenuineIntel
"""
SAPPHIRE_RAPIDS_FLAGS = ("sse4_1 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 "
                         "amx_tile amx_bf16 amx_int8")
ARM = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


def test_cpu_names_the_model_and_the_widest_isa(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert cpu(INTEL_AVX2) == {
        "cpu": "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz (GenuineIntel family 6 model 79 stepping 1)",
        "cpu_isa": "avx2"}
    amx = INTEL_AVX2.replace("sse4_1 sse4_2 avx fma avx2 bmi2", SAPPHIRE_RAPIDS_FLAGS)
    assert cpu(amx)["cpu_isa"] == "avx512_core_amx"
    no_fma = INTEL_AVX2.replace(" fma", "")  # AVX2 kernels need FMA too
    assert cpu(no_fma)["cpu_isa"] == "avx"
    arm = cpu(ARM)
    assert arm["cpu_isa"] == "sve" and arm["cpu"].endswith("(implementer 0x41 part 0xd40)")


def test_a_cap_on_onednn_dispatch_is_recorded(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    amx = INTEL_AVX2.replace("sse4_1 sse4_2 avx fma avx2 bmi2", SAPPHIRE_RAPIDS_FLAGS)
    assert cpu(amx)["cpu_isa"] == "avx2 (avx512_core_amx capped by ONEDNN_MAX_CPU_ISA)"
    assert cpu(INTEL_AVX2)["cpu_isa"] == "avx2"  # a cap above the CPU changes nothing
