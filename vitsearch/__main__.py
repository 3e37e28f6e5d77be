from vitsearch.cli import main

main()
