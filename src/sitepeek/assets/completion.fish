# sitepeek completion for fish:
#   sitepeek completion fish > ~/.config/fish/completions/sitepeek.fish
# sitepeek answers with one completion a line, TYPE<tab>VALUE<tab>HELP; every value is
# quoted here, so no completion is ever run, globbed or split.
function _sitepeek_completion
    set -l lines (env _SITEPEEK_COMPLETE=fish_complete COMP_WORDS=(commandline -cp) \
        COMP_CWORD=(commandline -t) sitepeek 2>/dev/null)
    for line in $lines
        set -l fields (string split -- \t "$line")
        switch "$fields[1]"
            case dir
                __fish_complete_directories "$fields[2]"
            case file
                __fish_complete_path "$fields[2]"
            case plain
                if test -n "$fields[3]"
                    printf '%s\t%s\n' "$fields[2]" "$fields[3]"
                else
                    printf '%s\n' "$fields[2]"
                end
        end
    end
end

complete --no-files --command sitepeek --arguments '(_sitepeek_completion)'
