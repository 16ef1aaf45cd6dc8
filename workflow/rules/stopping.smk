# The stopping rule (config `precision`): after block N (from min_blocks on), decide from every
# paired record so far whether each headline interval is narrow enough or another paired block
# runs. A checkpoint: the blocks after it enter the job graph only once it has decided.


checkpoint block_decision:
    input:
        records=decision_records,
    output:
        decision=DECISION,
    log:
        f"{LOGS}/blocks/decision~{{block}}.log",
    conda:
        "../../envs/cnnpar.yaml"
    params:
        half_width=PRECISION.half_width,
        min_blocks=PRECISION.min_blocks,
        max_blocks=PRECISION.max_blocks,
    script:
        "../scripts/decide.py"
