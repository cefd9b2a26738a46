from whisperfarm.cli import main

main()
