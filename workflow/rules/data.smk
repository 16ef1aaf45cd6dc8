# Check the MNIST files once before any job reads them (and, for source 'download', fetch them
# once instead of racing parallel jobs), and mark the end of each comparison family and of
# each paired block.


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


# The end of one comparison family in one block (see TRAIN_FAMILY in common.smk): in the
# family's job group, so that on a cluster the family's timed jobs are one submission.
rule train_family_done:
    input:
        train_family_members,
    output:
        TRAIN_FAMILY_DONE,
    log:
        f"{LOGS}/blocks/block~{{block}}/train/{TRAIN_FAMILY}.log",
    group:
        TRAIN_GROUP
    conda:
        "../../envs/cnnpar.yaml"
    shell:
        "printf '%s\\n' {input:q} > {output:q} 2> {log:q}"


rule classify_family_done:
    input:
        classify_family_members,
    output:
        CLASSIFY_FAMILY_DONE,
    log:
        f"{LOGS}/blocks/block~{{block}}/classify/{CLASSIFY_FAMILY}.log",
    group:
        CLASSIFY_GROUP
    conda:
        "../../envs/cnnpar.yaml"
    shell:
        "printf '%s\\n' {input:q} > {output:q} 2> {log:q}"
