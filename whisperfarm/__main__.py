from whisperfarm.launch import main

main()
