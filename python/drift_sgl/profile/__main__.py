from drift_sgl.profile.cli import main

main()
