# bash completion for nfc(1): commands, options, their choices (backends,
# formats), policy files, artifact directories, and set names for 'nfc set'.
#
# Commands and options are read from nfc's own --help (once per command and
# shell), so they are always those of the nfc being completed; set names come
# from 'nfc set list', else from the 'sets:' of the policies in the current
# directory. 'make install' puts this file where bash-completion finds it;
# without bash-completion, source it from ~/.bashrc.

declare -gA _nfc_help_cache

# The --help of "nfc [COMMAND]" as lines "opt NAME ARG" (ARG "-" for a flag),
# "pos METAVAR" and, for nfc itself, "cmd NAME".
_nfc_help() {
    local nfc=$1 command=$2
    local key="$nfc $command"
    if [[ -z ${_nfc_help_cache[$key]+set} ]]; then
        _nfc_help_cache[$key]=$(LC_ALL=C COLUMNS=200 "$nfc" $command --help 2>/dev/null | awk '
            /^positional arguments:/ { section = "pos"; next }
            /^(options|optional arguments):/ { section = "opt"; next }
            /^[^ ]/ { section = ""; next }
            section == "pos" && /^    [a-z]/ { print "cmd", $1; next }
            section == "pos" && /^  [^ -]/ { print "pos", $1; next }
            section == "opt" && /^  -/ {
                line = substr($0, 3); sub(/  .*/, "", line)
                n = split(line, parts, ", "); arg = "-"
                for (i = 1; i <= n; i++) if (split(parts[i], w, " ") > 1) arg = w[2]
                for (i = 1; i <= n; i++) { split(parts[i], w, " "); print "opt", w[1], arg }
            }')
    fi
    printf '%s\n' "${_nfc_help_cache[$key]}"
}

# Words of one kind ("cmd", "pos", or "opt" for option names) of nfc [COMMAND].
_nfc_words() {
    _nfc_help "$1" "$2" | awk -v kind="$3" '$1 == kind { print $2 }'
}

# The argument an option takes ("-" for none, "" if unknown).
_nfc_option_argument() {
    _nfc_help "$1" "$2" | awk -v option="$3" '$1 == "opt" && $2 == option { print $3; exit }'
}

# Set names: those 'nfc set list' prints first on its lines, else the keys
# under 'sets:' of the policies here. Nothing when neither says any.
_nfc_set_names() {
    local nfc=$1 names
    names=$("$nfc" set list 2>/dev/null | awk '/^[A-Za-z_][A-Za-z0-9_.-]*:?([ \t]|$)/ { sub(/:?([ \t].*)?$/, ""); print }')
    if [[ -z $names ]]; then
        local policies=(./*.yaml ./*.yml)
        names=$(awk '
            FNR == 1 { inside = 0; indent = 0 }
            /^sets:[ \t]*(#.*)?$/ { inside = 1; next }
            inside && /^[^ \t#]/ { inside = 0 }
            inside && /^[ \t]+[A-Za-z_][A-Za-z0-9_]*[ \t]*:/ {
                match($0, /^[ \t]+/)
                if (!indent) indent = RLENGTH
                if (RLENGTH == indent) { name = $0; sub(/^[ \t]+/, "", name); sub(/[ \t]*:.*/, "", name); print name }
            }' "${policies[@]}" 2>/dev/null | sort -u)
    fi
    printf '%s\n' "$names"
}

# Policy files (*.yaml, *.yml) and directories to descend into, or hold artifacts.
_nfc_policies() {
    local cur=$1
    compopt -o filenames 2>/dev/null
    COMPREPLY+=($(compgen -f -X '!*.yaml' -- "$cur") $(compgen -f -X '!*.yml' -- "$cur") $(compgen -d -- "$cur"))
}

# Complete the argument of an option, by what it takes.
_nfc_argument() {
    local cur=$1 argument=$2
    case $argument in
        \{*\})
            local choices=${argument#\{}
            choices=${choices%\}}
            COMPREPLY=($(compgen -W "${choices//,/ }" -- "$cur")) ;;
        DIR | OUTDIR)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -d -- "$cur")) ;;
        POLICY) _nfc_policies "$cur" ;;
        FILE)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -f -- "$cur")) ;;
        GITREV) COMPREPLY=($(compgen -W "$(git for-each-ref --format='%(refname:short)' 2>/dev/null)" -- "$cur")) ;;
        *) COMPREPLY=() ;;  # a number, a size, a date: nothing to offer
    esac
}

_nfc() {
    local nfc=${COMP_WORDS[0]} cur=${COMP_WORDS[COMP_CWORD]} prev=""
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}
    COMPREPLY=()

    # The command: the first word that is not an option.
    local i command="" at=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${COMP_WORDS[i]} != -* ]]; then
            command=${COMP_WORDS[i]}
            at=$i
            break
        fi
    done

    if [[ -z $command ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$(_nfc_words "$nfc" "" opt)" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$(_nfc_words "$nfc" "" cmd)" -- "$cur"))
        fi
        return 0
    fi

    # --option=VALUE: one word, or three where COMP_WORDBREAKS holds '='
    local argument
    if [[ $cur == --*=* ]]; then
        argument=$(_nfc_option_argument "$nfc" "$command" "${cur%%=*}")
        _nfc_argument "${cur#*=}" "$argument"
        return 0
    elif [[ $cur == = && $prev == --* ]]; then
        _nfc_argument "" "$(_nfc_option_argument "$nfc" "$command" "$prev")"
        return 0
    elif [[ $prev == = ]] && ((COMP_CWORD > 1)); then
        _nfc_argument "$cur" "$(_nfc_option_argument "$nfc" "$command" "${COMP_WORDS[COMP_CWORD - 2]}")"
        return 0
    fi
    if [[ $prev == -* ]]; then
        argument=$(_nfc_option_argument "$nfc" "$command" "$prev")
        if [[ -n $argument && $argument != - ]]; then
            _nfc_argument "$cur" "$argument"
            return 0
        fi
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_nfc_words "$nfc" "$command" opt)" -- "$cur"))
        return 0
    fi

    # Positional arguments: count those before this word (option arguments left out).
    local position=0 word
    for ((i = at + 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ $word == -* ]]; then
            argument=$(_nfc_option_argument "$nfc" "$command" "$word")
            [[ $word != *=* && -n $argument && $argument != - ]] && ((i++))
        else
            ((position++))
        fi
    done
    if [[ $command == set ]]; then
        if ((position == 0)); then
            COMPREPLY=($(compgen -W "add del list" -- "$cur"))
        elif ((position == 1)); then
            COMPREPLY=($(compgen -W "$(_nfc_set_names "$nfc")" -- "$cur"))
        fi
        return 0
    fi
    # This position's metavar; the last one repeats (POLICY...).
    local metavar
    metavar=$(_nfc_words "$nfc" "$command" pos | awk -v n=$((position + 1)) 'NR <= n { m = $0 } END { print m }')
    case $metavar in
        *POLICY* | OLD) _nfc_policies "$cur" ;;
        *OUTDIR*)
            compopt -o filenames 2>/dev/null
            COMPREPLY=($(compgen -d -- "$cur")) ;;
        FILE) _nfc_argument "$cur" FILE ;;
    esac
    return 0
}

complete -F _nfc nfc
