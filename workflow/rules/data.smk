# Check the MNIST files once before any job reads them (and, for source 'download', fetch them
# once instead of racing parallel jobs), and mark the end of each paired block.


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


rule block_done:
    input:
        block_members,
    output:
        BLOCK_DONE,
    log:
        f"{LOGS}/blocks/block~{{block}}.log",
    conda:
        "../../envs/cnnpar.yaml"
    shell:
        "printf '%s\\n' {input:q} > {output:q} 2> {log:q}"
