# Check the MNIST files once before any job reads them (and, for source 'download', fetch
# them once instead of racing parallel jobs), and measure each thread count's sgemm roofline.


rule verify_data:
    output:
        DATA_CHECK,
    log:
        f"{LOGS}/data/verify.log",
    shadow:
        "minimal"
    conda:
        "../../envs/cnnpar.yaml"
    params:
        data=data_args(),
    shell:
        "cnnpar data verify {params.data} > {output} 2> {log}"


rule env_info:
    output:
        ENV_INFO,
    log:
        f"{LOGS}/env/threads~{{threads}}/info.log",
    benchmark:
        f"{BENCHMARKS}/env/threads~{{threads}}/info.tsv"
    shadow:
        "minimal"
    conda:
        "../../envs/cnnpar.yaml"
    threads: lambda wildcards: int(wildcards.threads)
    resources:
        bench=1,
    shell:
        "cnnpar info --json --threads {threads} > {output} 2> {log}"
