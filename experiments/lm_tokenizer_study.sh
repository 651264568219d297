#!/bin/sh
# The tokenizer study: bytes against BPE-1024 and BPE-4096, fp and ternary in each run, then
# the table.
#
#     nohup sh experiments/lm_tokenizer_study.sh > runs/lm_tokenizers.log 2>&1 &
#
# Resumable: the tokenizers and token files are made once, and each arm trains with --resume.
# ROOT (default runs/lm_tokenizers) holds the data and one run folder per arm; OUT (default
# experiments/results/lm_tokenizers) gets the table.
set -e
root=${ROOT:-runs/lm_tokenizers}
out=${OUT:-experiments/results/lm_tokenizers}
configs=experiments/configs
data=$root/data
mkdir -p "$data"

for vocab in 1024 4096; do
    if [ ! -f "$data/bpe$vocab.json" ]; then
        echo "=== tokenizer $vocab $(date +%T)"
        tern-jax tokenizer train --vocab $vocab --text python_stdlib --out "$data/bpe$vocab.json"
    fi
    if [ ! -f "$data/stdlib_bpe$vocab.tok" ]; then
        echo "=== encode $vocab $(date +%T)"
        tern-jax tokenizer encode --tokenizer "$data/bpe$vocab.json" --text python_stdlib \
            --out "$data/stdlib_bpe$vocab.tok"
    fi
done

arm() {  # arm NAME [--set ...]: trains lm_tok_bytes.py into ROOT/NAME, resuming a started run
    name=$1
    shift
    resume=""
    [ -f "$root/$name/config.json" ] && resume=--resume
    echo "=== $name $(date +%T)"
    tern-jax train --config "$configs/lm_tok_bytes.py" --workdir "$root/$name" $resume "$@"
}
arm bytes
for vocab in 1024 4096; do
    arm bpe$vocab --set name=lm_tok_bpe$vocab --set data.tokenizer="$data/bpe$vocab.json" \
        --set data.text_path="$data/stdlib_bpe$vocab.tok"
done

echo "=== collect $(date +%T)"
python experiments/lm_tokenizers_collect.py "$root" --out "$out"
echo "=== done $(date +%T)"
