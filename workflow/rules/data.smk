# Check the MNIST files once before any job reads them (and, for source 'download', fetch them
# once instead of racing parallel jobs).


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
        data=data_source(),
        mirrors=mirror_options(),
    shell:
        "cnnpar data verify --data-source {params.data:q} {params.mirrors}"
        " > {output:q} 2> {log:q}"
