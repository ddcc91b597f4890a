/* Host harness: model_host input.bin output.bin (int8 input [C*H*W], int8 output). */
#include <stdio.h>
#include "model.h"

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s input.bin output.bin\n", argv[0]); return 2; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 1; }
    if (fread(model_input(), 1, MODEL_INPUT_BYTES, f) != MODEL_INPUT_BYTES) { fprintf(stderr, "short input\n"); return 1; }
    fclose(f);
    model_invoke();
    f = fopen(argv[2], "wb");
    if (!f) { perror(argv[2]); return 1; }
    fwrite(model_output(), 1, MODEL_OUTPUT_BYTES, f);
    fclose(f);
    printf("arena %d bytes\n", (int)MODEL_ARENA_BYTES);
    return 0;
}
