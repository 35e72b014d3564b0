"""moecalc: an executable analysis of DeepSeek-V3/R1-class MoE inference speed."""

__version__ = "0.1.0"
